// The controller installed with Helm, end to end: `helm install` of k8s/chart against a real
// kube-apiserver, the bridge and the function started from what Helm installed (testbed/system.ts,
// as a kubelet would start the pods' containers), the example workloads backed up as in the demo;
// then `helm upgrade` with changed values and the rollout it causes (a new replica surges, the old
// ones step down), with a copy held back across it: nothing released before its copy exists,
// nothing patched twice; then README's uninstall procedure, which leaves no finalizer behind.

import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { FINALIZER } from '../../bridge/workload.ts';
import { dockerImage } from '../../testbed/images.ts';
import { helmBinary } from '../../testbed/helm.ts';
import { REPO_ROOT } from '../../testbed/processes.ts';
import {
  CONTROLLER_NAMESPACE,
  containersOf,
  EXAMPLE_IMAGES,
  LEADER_LABEL,
  startSystem,
  waitFor,
  type BridgeProcess,
  type System,
  type Workload,
} from '../../testbed/system.ts';

const RELEASE = 'image-clone-controller';
const VERSION = (JSON.parse(await readFile(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version;

let system: System;
const kubectl = (args: readonly string[], input?: string) => system.kubectl(args, input);
const imagesOf = (workload: Workload) => containersOf(workload).map((container) => container.image);
const holdsFinalizer = (workload: Workload) => (workload.metadata.finalizers ?? []).includes(FINALIZER);

async function json<T>(args: readonly string[]): Promise<T> {
  return JSON.parse(await kubectl([...args, '-o', 'json'])) as T;
}

async function podLabels(name: string): Promise<Record<string, string> | undefined> {
  const result = await system.cluster.kubectl([
    'get',
    'pod',
    name,
    '-n',
    CONTROLLER_NAMESPACE,
    '-o',
    'jsonpath={.metadata.labels}',
  ]);
  if (result.code !== 0) return undefined;
  return JSON.parse(result.stdout || '{}') as Record<string, string>;
}

/** Writes of the bridges to workloads, by workload: "image pointed at its backup" and "finalizer released". */
function writesTo(namespace: string, name: string) {
  return system.logs.filter(
    (line) =>
      line.namespace === namespace &&
      line.name === name &&
      / reconciler: (image pointed at its backup|finalizer released)$/.test(line.msg),
  );
}

beforeAll(async () => {
  system = await startSystem({ install: { with: 'helm', release: RELEASE, values: { bridge: { replicas: 2 } } } });
}, 30 * 60_000);

afterAll(async () => {
  // E2E_LOG_DIR=/some/dir keeps every process's output for a look afterwards.
  if (process.env.E2E_LOG_DIR) await system?.writeLogs(process.env.E2E_LOG_DIR);
  await system?.stop();
}, 120_000);

// When a step fails, what the processes said is the first thing anyone needs.
beforeEach(({ onTestFailed }) => onTestFailed(() => console.error(system.recentOutput())));

describe('installed with Helm', () => {
  let leader: BridgeProcess;
  let standby: BridgeProcess;

  it('is a deployed release whose notes say what to check, with what the chart renders for these values', async () => {
    expect(await system.helm(['status', RELEASE, '-n', CONTROLLER_NAMESPACE])).toMatch(/STATUS: deployed/);
    const notes = await system.helm(['get', 'notes', RELEASE, '-n', CONTROLLER_NAMESPACE]);
    expect(notes).toContain('What to check next');
    expect(notes).toContain(`kubectl -n ${CONTROLLER_NAMESPACE} logs deployment/${RELEASE}-bridge`);
    expect(system.installed).toMatchObject({
      with: 'helm',
      bridgeDeployment: `${RELEASE}-bridge`,
      functionDeployment: `${RELEASE}-function`,
      bridgeService: `${RELEASE}-bridge`,
      functionService: `${RELEASE}-function`,
      serviceAccount: `${RELEASE}-bridge`,
    });
    const bridge = await json<{ spec: { replicas: number; template: { spec: { containers: { image: string }[] } } } }>([
      'get',
      'deployment',
      `${RELEASE}-bridge`,
      '-n',
      CONTROLLER_NAMESPACE,
    ]);
    expect(bridge.spec.replicas).toBe(2);
    expect(bridge.spec.template.spec.containers[0]!.image).toBe(
      `ghcr.io/image-clone-controller/image-clone-controller:${VERSION}`,
    );
  });

  it('runs two Ready replicas of which the Service reaches the leader only', async () => {
    leader = await system.startBridge(`${RELEASE}-bridge-a`);
    await waitFor('the first replica to lead', () => leader.serving(), 60_000);
    standby = await system.startBridge(`${RELEASE}-bridge-b`);
    await waitFor('the second replica to be ready', () => standby.ready(), 30_000);
    expect(await standby.serving()).toBe(false);
    expect((await podLabels(leader.name))?.[LEADER_LABEL]).toBe('true');
    expect(await podLabels(standby.name)).not.toHaveProperty(LEADER_LABEL);
    expect(leader.logs.find((line) => line.msg === 'bridge listening')).toMatchObject({ version: VERSION, mode: 'callback' });
    expect(await leader.metrics()).toContain(`image_clone_bridge_build_info{version="${VERSION}"} 1`);
  });

  it("backs up the example workloads end to end (the demo's flow)", async () => {
    await kubectl(['apply', '-f', '-'], await system.exampleWorkloads());
    // Each example at its backup by digest: nginx; busybox (the DaemonSet's init container) and
    // node-exporter; redis (the StatefulSet); alpine (the CronJob).
    const examples = new Map(
      EXAMPLE_IMAGES.map((example) => {
        const reference = `${system.sourceHost}/${example.repository}:${example.tag}`;
        const image = example.build();
        return [example.original, { reference, image, target: system.backupOf(reference, image.root.digest) }];
      }),
    );
    const target = (original: string) => examples.get(original)!.target;
    for (const [kind, name, images] of [
      ['Deployment', 'nginx', [target('nginx:1.27')]],
      ['DaemonSet', 'node-exporter', [target('busybox:1.36'), target('quay.io/prometheus/node-exporter:v1.8.2')]],
      ['StatefulSet', 'redis', [target('redis:7.4')]],
      ['CronJob', 'nightly-report', [target('alpine:3.20')]],
    ] as const) {
      await waitFor(
        `${kind} ${name} to be pinned and released`,
        async () => {
          const workload = await system.workload(kind, name, 'default');
          return (
            workload !== undefined && !holdsFinalizer(workload) && JSON.stringify(imagesOf(workload)) === JSON.stringify(images)
          );
        },
        90_000,
      );
    }
    for (const { reference, image } of examples.values()) await system.verifyBackup(reference, image);
    const events = await waitFor('the Released events', async () => {
      const list = await json<{ items: { reason: string; involvedObject: { name: string } }[] }>([
        'get',
        'events',
        '-n',
        'default',
      ]);
      const released = list.items.filter((event) => event.reason === 'Released').map((event) => event.involvedObject.name);
      return released.length === 4 ? released : undefined;
    });
    expect(events.sort()).toEqual(['nginx', 'nightly-report', 'node-exporter', 'redis']);
  });

  it('upgrades to changed values: a rollout with a copy held back across it releases nothing early and patches nothing twice', async () => {
    const namespace = 'e2e-upgrade';
    await kubectl(['create', 'namespace', namespace]);
    // A workload whose copy cannot finish while the source refuses its blobs, deleted: only its
    // finalizer keeps it, and only a finished copy may release it.
    const heldImage = dockerImage('e2e/held');
    const held = await system.seed('e2e/held', '1', heldImage);
    const refusal = system.sourceProxy.addRule({
      path: /^\/v2\/e2e\/held\/blobs\//,
      times: Infinity,
      fault: { kind: 'status', status: 503 },
    });
    const manifest = {
      apiVersion: 'apps/v1',
      kind: 'Deployment',
      metadata: { name: 'held', namespace, finalizers: [FINALIZER] },
      spec: {
        selector: { matchLabels: { app: 'held' } },
        template: { metadata: { labels: { app: 'held' } }, spec: { containers: [{ name: 'app', image: held }] } },
      },
    };
    await kubectl(['apply', '-f', '-'], JSON.stringify(manifest));
    await waitFor('the held copy to be refused', () =>
      system.sourceProxy.requests.some((request) => request.url.startsWith('/v2/e2e/held/blobs/')),
    );
    await kubectl(['delete', 'deployment', 'held', '-n', namespace, '--wait=false']);
    const stillHeld = async (when: string) => {
      const workload = await system.workload('Deployment', 'held', namespace);
      expect(workload, `held ${when}`).toBeDefined();
      expect(holdsFinalizer(workload!), `held keeps its finalizer ${when}`).toBe(true);
      expect(await system.hasBackup(held)).toBe(false);
    };
    await stillHeld('before the upgrade');

    const before = {
      nginx: (await system.workload('Deployment', 'nginx', 'default'))!,
      exporter: (await system.workload('DaemonSet', 'node-exporter', 'default'))!,
      secret: await json<{ data: Record<string, string> }>(['get', 'secret', `${RELEASE}-secrets`, '-n', CONTROLLER_NAMESPACE]),
      template: (
        await json<{ spec: { template: { metadata: { annotations: Record<string, string> } } } }>([
          'get',
          'deployment',
          `${RELEASE}-bridge`,
          '-n',
          CONTROLLER_NAMESPACE,
        ])
      ).spec.template,
    };

    const logsBefore = system.logs.length;
    await system.helm([
      'upgrade',
      RELEASE,
      join(REPO_ROOT, 'k8s/chart'),
      '-n',
      CONTROLLER_NAMESPACE,
      '--reuse-values',
      '--set',
      'logLevel=debug',
      '--set',
      'bridge.resources.requests.cpu=100m',
    ]);
    expect(await system.helm(['status', RELEASE, '-n', CONTROLLER_NAMESPACE])).toMatch(/REVISION: 2/);
    const config = await json<{ data: Record<string, string> }>([
      'get',
      'configmap',
      `${RELEASE}-config`,
      '-n',
      CONTROLLER_NAMESPACE,
    ]);
    expect(config.data.LOG_LEVEL).toBe('debug');
    // The generated secrets are kept (the pods would otherwise disagree with a Worker's or each other's).
    const secret = await json<{ data: Record<string, string> }>([
      'get',
      'secret',
      `${RELEASE}-secrets`,
      '-n',
      CONTROLLER_NAMESPACE,
    ]);
    expect(secret.data).toEqual(before.secret.data);
    // The pod template changed (config checksum, resources): Kubernetes rolls the Deployment.
    const deployment = await json<{
      spec: {
        template: {
          metadata: { annotations: Record<string, string> };
          spec: { containers: { resources: { requests: { cpu: string } } }[] };
        };
      };
    }>(['get', 'deployment', `${RELEASE}-bridge`, '-n', CONTROLLER_NAMESPACE]);
    expect(deployment.spec.template.metadata.annotations['checksum/config']).not.toBe(
      before.template.metadata.annotations['checksum/config'],
    );
    expect(deployment.spec.template.spec.containers[0]!.resources.requests.cpu).toBe('100m');
    await stillHeld('after helm upgrade');

    // The rollout (maxSurge 1, maxUnavailable 0): a new pod starts and is Ready, then an old one goes.
    const c = await system.startBridge(`${RELEASE}-bridge-c`);
    await waitFor('the first new replica to be ready', () => c.ready(), 30_000);
    await standby.stop();
    await stillHeld('with one new replica');
    const d = await system.startBridge(`${RELEASE}-bridge-d`);
    await waitFor('the second new replica to be ready', () => d.ready(), 30_000);
    await leader.stop();
    const next = await waitFor(
      'a new replica to lead',
      async () => ((await c.serving()) ? c : (await d.serving()) ? d : undefined),
      30_000,
    );
    await stillHeld('after the handover');
    expect(next.logs.some((line) => line.level === 20)).toBe(true); // LOG_LEVEL=debug took effect
    expect(await podLabels(leader.name)).toBeUndefined(); // the old pods are gone
    // The old leader took its label off before it let go of the lease.
    const labelLines = leader.logs.filter((line) => line.msg === 'leader label set' || line.msg === 'leader label removed');
    expect(labelLines.map((line) => line.msg)).toEqual(['leader label removed', 'leader label set', 'leader label removed']);
    const released = leader.logs.find((line) => line.msg === 'released the lease')!;
    expect(labelLines.at(-1)!.time).toBeLessThanOrEqual(released.time);

    // The source serves the blobs again: the new leader finishes the copy, then lets the workload go.
    refusal.remove();
    await waitFor(
      'the held workload to be released and gone',
      async () => (await system.workload('Deployment', 'held', namespace)) === undefined,
      90_000,
    );
    await system.verifyBackup(held, heldImage);
    expect(writesTo(namespace, 'held').map((line) => line.msg)).toEqual(['Deployment reconciler: finalizer released']);

    // The pinned workloads were left as they were: the new replicas found nothing to do.
    expect((await system.workload('Deployment', 'nginx', 'default'))!.metadata.resourceVersion).toBe(
      before.nginx.metadata.resourceVersion,
    );
    expect((await system.workload('DaemonSet', 'node-exporter', 'default'))!.metadata.resourceVersion).toBe(
      before.exporter.metadata.resourceVersion,
    );
    expect(
      system.logs
        .slice(logsBefore)
        .filter(
          (line) =>
            line.namespace === 'default' && / reconciler: (image pointed at its backup|finalizer released)$/.test(line.msg),
        ),
    ).toEqual([]);

    // One leader at a time throughout.
    const terms = system.bridges.flatMap((bridge) => {
      const spans: { bridge: string; from: number; to: number }[] = [];
      let from: number | undefined;
      for (const line of bridge.logs) {
        if (line.msg === 'became the leader') from = line.time;
        if (line.msg === 'stopped leading' && from !== undefined) {
          spans.push({ bridge: bridge.name, from, to: line.time });
          from = undefined;
        }
      }
      if (from !== undefined) spans.push({ bridge: bridge.name, from, to: Date.now() });
      return spans;
    });
    for (const a of terms) {
      for (const b of terms)
        if (a !== b) expect(a.to <= b.from || b.to <= a.from, `${a.bridge} and ${b.bridge} overlap`).toBe(true);
    }
    leader = next;
  });

  it("uninstalls with README's procedure, leaving no workload held by the finalizer", async () => {
    // A workload whose copy never finishes, deleted: after the uninstall nothing would ever release it.
    const namespace = 'e2e-uninstall';
    await kubectl(['create', 'namespace', namespace]);
    const stuckImage = await system.seed('e2e/stuck', '1', dockerImage('e2e/stuck'));
    system.sourceProxy.addRule({ path: /^\/v2\/e2e\/stuck\/blobs\//, times: Infinity, fault: { kind: 'status', status: 503 } });
    const stuck = (name: string) => ({
      apiVersion: 'apps/v1',
      kind: 'Deployment',
      metadata: { name, namespace, finalizers: [FINALIZER, 'example.com/keep'] },
      spec: {
        selector: { matchLabels: { app: name } },
        template: { metadata: { labels: { app: name } }, spec: { containers: [{ name: 'app', image: stuckImage }] } },
      },
    });
    await kubectl(
      ['apply', '-f', '-'],
      JSON.stringify({ apiVersion: 'v1', kind: 'List', items: [stuck('stuck'), stuck('waiting')] }),
    );
    await waitFor('the stuck copy to be tried', () =>
      system.sourceProxy.requests.some((request) => request.url.startsWith('/v2/e2e/stuck/blobs/')),
    );
    await kubectl(['delete', 'deployment', 'stuck', '-n', namespace, '--wait=false']);

    const readme = await readFile(join(REPO_ROOT, 'README.md'), 'utf8');
    const procedure = /<!-- uninstall:helm -->\s*```sh\n([\s\S]*?)```/.exec(readme)?.[1];
    expect(procedure, 'README has the uninstall procedure').toBeDefined();
    const helm = await helmBinary();
    const run = await new Promise<{ code: number | null; output: string }>((resolve) => {
      const child = spawn('bash', ['-euo', 'pipefail', '-c', procedure!], {
        cwd: REPO_ROOT,
        env: {
          PATH: `${dirname(helm)}:${process.env.PATH ?? ''}`,
          HOME: process.env.HOME ?? '',
          KUBECONFIG: system.cluster.kubeconfigPath,
          HELM_CACHE_HOME: join(system.cluster.dir, 'helm/cache'),
          HELM_CONFIG_HOME: join(system.cluster.dir, 'helm/config'),
          HELM_DATA_HOME: join(system.cluster.dir, 'helm/data'),
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let output = '';
      child.stdout.on('data', (chunk) => (output += chunk));
      child.stderr.on('data', (chunk) => (output += chunk));
      child.on('close', (code) => resolve({ code, output }));
    });
    expect(run.code, run.output).toBe(0);
    // The pods would be gone with their Deployments.
    for (const bridge of system.bridges) await bridge.stop();
    await system.stopFunction();

    expect(await system.helm(['list', '-n', CONTROLLER_NAMESPACE, '-q'])).toBe('');
    for (const [kind, name] of [
      ['deployment', `${RELEASE}-bridge`],
      ['configmap', `${RELEASE}-config`],
      ['secret', `${RELEASE}-secrets`],
      ['clusterrole', `${RELEASE}-bridge`],
      ['validatingadmissionpolicy', `${RELEASE}-guardrails`],
    ] as const) {
      const result = await system.cluster.kubectl(['get', kind, name, '-n', CONTROLLER_NAMESPACE]);
      expect(result.stderr, `${kind} ${name}`).toContain('NotFound');
    }
    // No workload anywhere carries the finalizer; the deleted one is gone, others keep theirs.
    for (const kind of ['deployments', 'daemonsets']) {
      const list = await json<{ items: Workload[] }>(['get', kind, '--all-namespaces']);
      expect(list.items.filter(holdsFinalizer).map((workload) => workload.metadata.name)).toEqual([]);
    }
    const waiting = (await system.workload('Deployment', 'waiting', namespace))!;
    expect(waiting.metadata.finalizers).toEqual(['example.com/keep']);
    const stuckNow = await system.workload('Deployment', 'stuck', namespace);
    expect(stuckNow?.metadata.finalizers).toEqual(['example.com/keep']); // only a finalizer of someone else's holds it now
    // The pinned workloads stay pinned to their copies.
    expect(imagesOf((await system.workload('Deployment', 'nginx', 'default'))!)[0]).toContain('@sha256:');
  });
});
