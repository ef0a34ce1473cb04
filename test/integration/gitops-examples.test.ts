// The examples for running beside Argo CD and Flux (k8s/examples) apply to a real API server (with
// stand-ins of their CRDs, testbed/crds/gitops.yml), and say what the controller writes: Argo CD
// ignores exactly the fields pinning changes, Flux's namespace is backup-only.

import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { imagePath } from '../../bridge/reconcile/patch.ts';
import { KINDS, MODE_ANNOTATION, ORIGINAL_IMAGES_ANNOTATION, type WorkloadKind } from '../../bridge/workload.ts';
import { startKubeCluster, type KubeCluster } from '../../testbed/kube-cluster.ts';
import { REPO_ROOT } from '../../testbed/processes.ts';
import { waitFor } from '../../testbed/wait.ts';

interface Applied {
  kind: string;
  metadata: { name: string; annotations?: Record<string, string> };
  spec?: {
    ignoreDifferences?: { group: string; kind: string; jqPathExpressions?: string[]; jsonPointers?: string[] }[];
    syncPolicy?: { syncOptions?: string[] };
  };
}

describe('running beside Argo CD and Flux', () => {
  let cluster: KubeCluster;
  let applied: Applied[];

  beforeAll(async () => {
    cluster = await startKubeCluster();
    const kubectl = async (args: string[]) => {
      const result = await cluster.kubectl(args);
      if (result.code !== 0) throw new Error(result.stderr);
      return result.stdout;
    };
    await kubectl(['apply', '-f', join(REPO_ROOT, 'testbed/crds/gitops.yml')]);
    for (const namespace of ['argocd', 'flux-system']) await kubectl(['create', 'namespace', namespace]);
    // The CRDs are served a moment after they are created.
    const dryRun = () => kubectl(['apply', '--dry-run=server', '-o', 'json', '-f', join(REPO_ROOT, 'k8s/examples')]);
    const output = await waitFor('the examples to apply', () => dryRun().catch(() => undefined), 30_000);
    applied = (JSON.parse(output) as { items: Applied[] }).items;
  });

  afterAll(async () => cluster?.stop());

  it('Argo CD: ignores the images and the annotation pinning writes, and keeps syncs from writing them back', () => {
    const application = applied.find((item) => item.kind === 'Application')!;
    const ignored = application.spec!.ignoreDifferences!;
    const pinnable = (Object.keys(KINDS) as WorkloadKind[]).filter((kind) => KINDS[kind].pinnable);
    expect(ignored.map((entry) => entry.kind).sort()).toEqual([...pinnable].sort());
    for (const kind of pinnable) {
      const entry = ignored.find((candidate) => candidate.kind === kind)!;
      expect(entry.group).toBe(KINDS[kind].group);
      // The jq path of each image field the bridge patches (JSON Pointer /a/b/0/image → .a.b[].image).
      for (const field of ['containers', 'initContainers'] as const) {
        const jq = imagePath(kind, field, 0)
          .replace(/\/0\/image$/, '')
          .replace(/\//g, '.');
        expect(entry.jqPathExpressions, `${kind} ${field}`).toContainEqual(
          expect.stringMatching(new RegExp(`^${jq.replace(/\./g, '\\.')}\\[\\]\\??\\.image$`)),
        );
      }
      expect(entry.jsonPointers).toEqual([`/metadata/annotations/${ORIGINAL_IMAGES_ANNOTATION.replace('/', '~1')}`]);
    }
    expect(application.spec!.syncPolicy!.syncOptions).toContain('RespectIgnoreDifferences=true');
  });

  it('Flux: its namespace is backup-only, so nothing it applies is rewritten', () => {
    const namespace = applied.find((item) => item.kind === 'Namespace')!;
    expect(namespace.metadata.annotations?.[MODE_ANNOTATION]).toBe('backup-only');
    const kustomization = applied.find((item) => item.kind === 'Kustomization')!;
    expect((kustomization.spec as { targetNamespace?: string }).targetNamespace).toBe(namespace.metadata.name);
  });
});
