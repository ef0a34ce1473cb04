import { isDeepStrictEqual } from 'node:util';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decide, imageSlots, modeFor, type Decision, type DecisionContext } from '../../bridge/reconcile/decide.ts';
import {
  buildWorkloadPatch,
  imagePath,
  removeFinalizerOperations,
  replaceImageOperations,
  type JsonPatchOperation,
} from '../../bridge/reconcile/patch.ts';
import {
  FINALIZER,
  MODE_ANNOTATION,
  OPT_OUT_ANNOTATION,
  ORIGINAL_IMAGES_ANNOTATION,
  podSpecOf,
  type Workload,
} from '../../bridge/workload.ts';
import { backupLocation } from '../../functions/contract/index.ts';

// --- a minimal RFC 6902 applier with the API server's all-or-nothing semantics -----------------

class PatchRejected extends Error {}

function applyJsonPatch<T>(document: T, operations: readonly JsonPatchOperation[]): T {
  const copy = structuredClone(document) as unknown;
  for (const operation of operations) {
    const tokens = operation.path
      .split('/')
      .slice(1)
      .map((token) => token.replace(/~1/g, '/').replace(/~0/g, '~'));
    const last = tokens.pop();
    if (last === undefined) throw new PatchRejected('empty path');
    let parent = copy as Record<string, unknown> | unknown[];
    for (const token of tokens) {
      const next = (parent as Record<string, unknown>)[token];
      if (next === null || typeof next !== 'object') throw new PatchRejected(`missing ${operation.path}`);
      parent = next as Record<string, unknown>;
    }
    if (operation.op === 'add') {
      if (Array.isArray(parent)) parent.splice(last === '-' ? parent.length : Number(last), 0, structuredClone(operation.value));
      else (parent as Record<string, unknown>)[last] = structuredClone(operation.value);
      continue;
    }
    const exists = Array.isArray(parent) ? /^\d+$/.test(last) && Number(last) < parent.length : Object.hasOwn(parent, last);
    if (!exists) throw new PatchRejected(`missing ${operation.path}`);
    if (operation.op === 'test') {
      if (!isDeepStrictEqual((parent as Record<string, unknown>)[last], operation.value)) {
        throw new PatchRejected(`test failed at ${operation.path}`);
      }
    } else if (operation.op === 'replace') {
      (parent as Record<string, unknown>)[last] = structuredClone(operation.value);
    } else if (Array.isArray(parent)) {
      parent.splice(Number(last), 1);
    } else {
      delete (parent as Record<string, unknown>)[last];
    }
  }
  return copy as T;
}

// --- fixtures ------------------------------------------------------------------------------------

const DIGEST_A = `sha256:${'a'.repeat(64)}`;
const DIGEST_B = `sha256:${'b'.repeat(64)}`;
const backup = backupLocation('registry.example.com', 'backup');
const hub = backupLocation('docker.io', 'backupacct');

const NGINX = 'docker.io/library/nginx:1.27';
const NGINX_BACKUP = `registry.example.com/backup/docker.io/library/nginx:1.27@${DIGEST_A}`;
const BUSYBOX = 'docker.io/library/busybox:1.36';
const BUSYBOX_BACKUP = `registry.example.com/backup/docker.io/library/busybox:1.36@${DIGEST_B}`;

interface WorkloadSpec {
  namespace?: string;
  containers?: string[];
  initContainers?: string[];
  finalizers?: string[];
  annotations?: Record<string, string>;
  deletionTimestamp?: string | Date;
}

function workload(spec: WorkloadSpec = {}): Workload {
  return {
    metadata: {
      name: 'web',
      namespace: spec.namespace ?? 'default',
      ...(spec.finalizers && { finalizers: spec.finalizers }),
      ...(spec.annotations && { annotations: spec.annotations }),
      ...(spec.deletionTimestamp && { deletionTimestamp: spec.deletionTimestamp }),
    },
    spec: {
      template: {
        spec: {
          containers: (spec.containers ?? ['nginx:1.27']).map((image, index) => ({ name: `c${index}`, image })),
          ...(spec.initContainers && {
            initContainers: spec.initContainers.map((image, index) => ({ name: `i${index}`, image })),
          }),
        },
      },
    },
  };
}

function context(
  known: Record<string, string> = {},
  options: { ignored?: string[]; location?: typeof backup } = {},
): DecisionContext {
  return {
    backup: options.location ?? backup,
    ignoredNamespaces: new Set(['kube-system', ...(options.ignored ?? [])]),
    knownBackup: (source) => known[source],
    defaultMode: 'pin',
  };
}

function images(object: Workload): string[] {
  return imageSlots('Deployment', object).map((slot) => slot.image);
}

function reconcile(decision: Decision) {
  if (decision.action !== 'reconcile') throw new Error(`expected a reconcile decision, got ${decision.action}`);
  return decision;
}

// --- the patch builder ---------------------------------------------------------------------------

describe('patch builder', () => {
  it('guards each image replacement with a test of the old value', () => {
    expect(replaceImageOperations({ path: imagePath('Deployment', 'containers', 2), from: 'nginx', to: 'b/nginx@x' })).toEqual([
      { op: 'test', path: '/spec/template/spec/containers/2/image', value: 'nginx' },
      { op: 'replace', path: '/spec/template/spec/containers/2/image', value: 'b/nginx@x' },
    ]);
    expect(imagePath('Deployment', 'initContainers', 0)).toBe('/spec/template/spec/initContainers/0/image');
  });

  it('removes every occurrence of the finalizer, highest index first, each guarded by a test', () => {
    const operations = removeFinalizerOperations(['a', FINALIZER, 'b', FINALIZER], FINALIZER);
    expect(operations).toEqual([
      { op: 'test', path: '/metadata/finalizers/3', value: FINALIZER },
      { op: 'remove', path: '/metadata/finalizers/3' },
      { op: 'test', path: '/metadata/finalizers/1', value: FINALIZER },
      { op: 'remove', path: '/metadata/finalizers/1' },
    ]);
    const after = applyJsonPatch({ metadata: { finalizers: ['a', FINALIZER, 'b', FINALIZER] } }, operations);
    expect(after.metadata.finalizers).toEqual(['a', 'b']);
  });

  it('removes nothing when the finalizer is absent', () => {
    expect(removeFinalizerOperations(['other'], FINALIZER)).toEqual([]);
    expect(buildWorkloadPatch({ replacements: [], finalizers: ['other'], finalizer: FINALIZER, releaseFinalizer: true })).toEqual(
      [],
    );
  });

  it('keeps the finalizer unless asked to release it', () => {
    const patch = buildWorkloadPatch({
      replacements: [{ path: imagePath('Deployment', 'containers', 0), from: 'nginx:1.27', to: NGINX_BACKUP }],
      finalizers: [FINALIZER],
      finalizer: FINALIZER,
      releaseFinalizer: false,
    });
    expect(patch.map((operation) => operation.path)).not.toContain('/metadata/finalizers/0');
  });

  it('applies to the object it was built from and to no other (property)', () => {
    const image = fc.constantFrom('nginx:1.27', 'busybox:1.36', 'quay.io/x/y:1', 'ghcr.io/a/b@' + DIGEST_A);
    fc.assert(
      fc.property(
        fc.array(image, { minLength: 1, maxLength: 4 }),
        fc.array(fc.constantFrom('other.io/keep', FINALIZER), { maxLength: 4 }),
        fc.nat(),
        (containers, finalizers, victim) => {
          const object = workload({ containers, finalizers });
          const replacements = containers.map((from, index) => ({
            path: imagePath('Deployment', 'containers', index),
            from,
            to: `backup/${index}@${DIGEST_A}`,
          }));
          const patch = buildWorkloadPatch({ replacements, finalizers, finalizer: FINALIZER, releaseFinalizer: true });
          const patched = applyJsonPatch(object, patch);
          expect(images(patched)).toEqual(containers.map((_, index) => `backup/${index}@${DIGEST_A}`));
          expect(patched.metadata?.finalizers ?? []).toEqual(finalizers.filter((name) => name !== FINALIZER));

          // Someone changed one image since: the whole patch is refused.
          const changed = structuredClone(object);
          podSpecOf('Deployment', changed)!.containers![victim % containers.length]!.image = 'changed:1';
          expect(() => applyJsonPatch(changed, patch)).toThrow(PatchRejected);
        },
      ),
    );
  });

  it('is refused when the finalizers moved since it was built', () => {
    const patch = buildWorkloadPatch({
      replacements: [],
      finalizers: ['x', FINALIZER],
      finalizer: FINALIZER,
      releaseFinalizer: true,
    });
    expect(() => applyJsonPatch({ metadata: { finalizers: [FINALIZER] } }, patch)).toThrow(PatchRejected);
    expect(() => applyJsonPatch({ metadata: { finalizers: ['y', FINALIZER] } }, patch)).not.toThrow();
  });
});

// --- the decision --------------------------------------------------------------------------------

describe('decide: ignored workloads', () => {
  it('never writes kube-system: no copy, no patch, not even its finalizer released', () => {
    for (const finalizers of [[], [FINALIZER]]) {
      for (const deletionTimestamp of [undefined, '2026-11-27T10:00:00Z']) {
        const object = workload({ namespace: 'kube-system', finalizers, ...(deletionTimestamp && { deletionTimestamp }) });
        expect(decide('Deployment', object, context({ [NGINX]: NGINX_BACKUP }))).toEqual({
          action: 'none',
          mode: 'backup-only',
          slots: [],
        });
      }
    }
  });

  it('only releases our finalizer in an ignored namespace, without touching the spec', () => {
    const object = workload({ namespace: 'team-a', finalizers: ['keep', FINALIZER] });
    const decision = decide('Deployment', object, context({ [NGINX]: NGINX_BACKUP }, { ignored: ['team-a'] }));
    expect(decision.action).toBe('ignore');
    const patched = applyJsonPatch(object, decision.action === 'ignore' ? decision.patch : []);
    expect(patched.metadata?.finalizers).toEqual(['keep']);
    expect(images(patched)).toEqual(['nginx:1.27']);
  });

  it('ignores the namespaces listed in IGNORE_NAMESPACES', () => {
    expect(decide('Deployment', workload({ namespace: 'team-a' }), context({}, { ignored: ['team-a'] }))).toMatchObject({
      action: 'ignore',
      reason: 'namespace',
    });
    expect(decide('Deployment', workload({ namespace: 'team-b' }), context({}, { ignored: ['team-a'] }))).toMatchObject({
      action: 'reconcile',
    });
  });

  it.each(['true', 'True', ' TRUE '])('honours the opt-out annotation %j: releases the finalizer, copies nothing', (value) => {
    const object = workload({ finalizers: [FINALIZER], annotations: { [OPT_OUT_ANNOTATION]: value } });
    const decision = decide('Deployment', object, context());
    expect(decision).toMatchObject({ action: 'ignore', reason: 'opt-out' });
    expect(applyJsonPatch(object, decision.action === 'ignore' ? decision.patch : []).metadata?.finalizers).toEqual([]);
  });

  it.each(['false', '', 'yes'])('does not treat the annotation value %j as an opt-out', (value) => {
    expect(decide('Deployment', workload({ annotations: { [OPT_OUT_ANNOTATION]: value } }), context()).action).toBe('reconcile');
  });

  it('ignores an opted-out workload without our finalizer entirely', () => {
    expect(decide('Deployment', workload({ annotations: { [OPT_OUT_ANNOTATION]: 'true' } }), context())).toEqual({
      action: 'ignore',
      reason: 'opt-out',
      patch: [],
    });
  });
});

describe('decide: images to copy', () => {
  it('asks for every image of containers and initContainers not backed up yet, normalised, once each', () => {
    const object = workload({
      initContainers: ['busybox:1.36'],
      containers: ['nginx:1.27', 'docker.io/library/nginx:1.27', 'quay.io/prometheus/node-exporter:v1.8.2'],
      finalizers: [FINALIZER],
    });
    const decision = reconcile(decide('Deployment', object, context()));
    expect(decision.copy).toEqual([BUSYBOX, NGINX, 'quay.io/prometheus/node-exporter:v1.8.2']);
    expect(decision.patch).toEqual([]);
    expect(decision.releaseFinalizer).toBe(false);
    expect(decision.settled).toBe(false);
  });

  it('normalises an image without tag to :latest and keeps digests', () => {
    const decision = reconcile(decide('Deployment', workload({ containers: ['nginx', `ghcr.io/a/b@${DIGEST_A}`] }), context()));
    expect(decision.copy).toEqual(['docker.io/library/nginx:latest', `ghcr.io/a/b@${DIGEST_A}`]);
  });

  it('never asks for an image that already lives in the backup namespace', () => {
    const decision = decide('Deployment', workload({ containers: [NGINX_BACKUP] }), context());
    expect(decision.action).toBe('none');
  });

  it('recognises backups on Docker Hub however they are spelled', () => {
    const decision = decide(
      'Deployment',
      workload({ containers: [`backupacct/nginx:1.27@${DIGEST_A}`, `index.docker.io/backupacct/busybox:1`] }),
      context({}, { location: hub }),
    );
    expect(decision.action).toBe('none');
  });

  it('does not treat a look-alike namespace as the backup', () => {
    const decision = reconcile(
      decide('Deployment', workload({ containers: ['registry.example.com/backup-old/nginx:1'] }), context()),
    );
    expect(decision.copy).toEqual(['registry.example.com/backup-old/nginx:1']);
  });

  it('reports an invalid reference and neither copies it nor lets it hold the finalizer', () => {
    const object = workload({ containers: ['Not A Valid::ref', 'nginx:1.27'], finalizers: [FINALIZER] });
    const decision = reconcile(decide('Deployment', object, context({ [NGINX]: NGINX_BACKUP })));
    expect(decision.slots[0]).toMatchObject({ state: 'invalid' });
    expect(decision.copy).toEqual([]);
    expect(decision.releaseFinalizer).toBe(true);
    expect(images(applyJsonPatch(object, decision.patch))).toEqual(['Not A Valid::ref', NGINX_BACKUP]);
  });

  it('has nothing to do for a pod template without images', () => {
    expect(
      decide(
        'Deployment',
        { metadata: { name: 'x', namespace: 'default' }, spec: { template: { spec: { containers: [] } } } },
        context(),
      ).action,
    ).toBe('none');
    expect(
      decide('Deployment', { metadata: { name: 'x', namespace: 'default', annotations: null, finalizers: null } }, context())
        .action,
    ).toBe('none');
  });
});

describe('decide: the patch', () => {
  it('points every image at its backup and releases the finalizer in one patch when all are known', () => {
    const object = workload({ initContainers: ['busybox:1.36'], containers: ['nginx:1.27'], finalizers: ['other', FINALIZER] });
    const decision = reconcile(decide('Deployment', object, context({ [NGINX]: NGINX_BACKUP, [BUSYBOX]: BUSYBOX_BACKUP })));
    expect(decision.copy).toEqual([]);
    expect(decision.settled).toBe(true);
    expect(decision.releaseFinalizer).toBe(true);
    expect(decision.patch).toEqual([
      { op: 'test', path: '/spec/template/spec/initContainers/0/image', value: 'busybox:1.36' },
      { op: 'replace', path: '/spec/template/spec/initContainers/0/image', value: BUSYBOX_BACKUP },
      { op: 'test', path: '/spec/template/spec/containers/0/image', value: 'nginx:1.27' },
      { op: 'replace', path: '/spec/template/spec/containers/0/image', value: NGINX_BACKUP },
      {
        op: 'add',
        path: '/metadata/annotations',
        value: { [ORIGINAL_IMAGES_ANNOTATION]: JSON.stringify({ i0: 'busybox:1.36', c0: 'nginx:1.27' }) },
      },
      { op: 'test', path: '/metadata/finalizers/1', value: FINALIZER },
      { op: 'remove', path: '/metadata/finalizers/1' },
    ]);
    const patched = applyJsonPatch(object, decision.patch);
    expect(images(patched)).toEqual([BUSYBOX_BACKUP, NGINX_BACKUP]);
    expect(patched.metadata?.finalizers).toEqual(['other']);
    // Applied, the workload needs nothing more.
    expect(decide('Deployment', patched, context({ [NGINX]: NGINX_BACKUP, [BUSYBOX]: BUSYBOX_BACKUP })).action).toBe('none');
  });

  it('patches the known images at once and keeps the finalizer while others are still copying', () => {
    const object = workload({ containers: ['nginx:1.27', 'busybox:1.36'], finalizers: [FINALIZER] });
    const decision = reconcile(decide('Deployment', object, context({ [NGINX]: NGINX_BACKUP })));
    expect(decision.copy).toEqual([BUSYBOX]);
    expect(decision.releaseFinalizer).toBe(false);
    expect(decision.settled).toBe(false);
    const patched = applyJsonPatch(object, decision.patch);
    expect(images(patched)).toEqual([NGINX_BACKUP, 'busybox:1.36']);
    expect(patched.metadata?.finalizers).toEqual([FINALIZER]);
  });

  it('replaces each container using an image, spelled either way', () => {
    const object = workload({ containers: ['nginx:1.27', 'docker.io/library/nginx:1.27'] });
    const decision = reconcile(decide('Deployment', object, context({ [NGINX]: NGINX_BACKUP })));
    expect(decision.replacements).toHaveLength(2);
    expect(images(applyJsonPatch(object, decision.patch))).toEqual([NGINX_BACKUP, NGINX_BACKUP]);
  });

  it('patches a workload without our finalizer too (every image is backed up), touching no finalizer', () => {
    const object = workload({ finalizers: ['other'] });
    const decision = reconcile(decide('Deployment', object, context({ [NGINX]: NGINX_BACKUP })));
    expect(decision.releaseFinalizer).toBe(false);
    expect(decision.patch.some((operation) => operation.path.startsWith('/metadata/finalizers'))).toBe(false);
  });

  it('only releases the finalizer of a workload whose images are all backups already', () => {
    const object = workload({ containers: [NGINX_BACKUP], finalizers: [FINALIZER] });
    const decision = reconcile(decide('Deployment', object, context()));
    expect(decision.replacements).toEqual([]);
    expect(decision.patch).toEqual(removeFinalizerOperations([FINALIZER], FINALIZER));
  });
});

describe('decide: a workload being deleted', () => {
  it.each([
    ['a string', '2026-11-27T10:00:00Z'],
    ['a Date', new Date('2026-11-27T10:00:00Z')],
  ])('keeps the finalizer until its images are copied (deletionTimestamp as %s)', (_, deletionTimestamp) => {
    const object = workload({ containers: ['nginx:1.27'], finalizers: [FINALIZER], deletionTimestamp });
    const decision = reconcile(decide('Deployment', object, context()));
    expect(decision.deleting).toBe(true);
    expect(decision.copy).toEqual([NGINX]);
    expect(decision.patch).toEqual([]);
  });

  it('is then released without its spec being touched', () => {
    const object = workload({
      containers: ['nginx:1.27'],
      initContainers: ['busybox:1.36'],
      finalizers: [FINALIZER],
      deletionTimestamp: '2026-11-27T10:00:00Z',
    });
    const decision = reconcile(decide('Deployment', object, context({ [NGINX]: NGINX_BACKUP, [BUSYBOX]: BUSYBOX_BACKUP })));
    expect(decision.replacements).toEqual([]);
    expect(decision.releaseFinalizer).toBe(true);
    const patched = applyJsonPatch(object, decision.patch);
    expect(images(patched)).toEqual(['busybox:1.36', 'nginx:1.27']);
    expect(patched.metadata?.finalizers).toEqual([]);
  });

  it('starts no copy for a workload leaving without our finalizer', () => {
    expect(
      decide('Deployment', workload({ finalizers: ['other'], deletionTimestamp: '2026-11-27T10:00:00Z' }), context()).action,
    ).toBe('none');
  });

  it('releases an ignored workload being deleted at once', () => {
    const object = workload({ namespace: 'team-a', finalizers: [FINALIZER], deletionTimestamp: '2026-11-27T10:00:00Z' });
    const decision = decide('Deployment', object, context({}, { ignored: ['team-a'] }));
    expect(decision.action === 'ignore' && applyJsonPatch(object, decision.patch).metadata?.finalizers).toEqual([]);
  });
});

describe('decide: consistency (property)', () => {
  const image = fc.constantFrom('nginx:1.27', 'busybox:1.36', 'quay.io/a/b:2', NGINX_BACKUP, 'Bad::Ref');
  const knownTargets: Record<string, string> = { [NGINX]: NGINX_BACKUP, [BUSYBOX]: BUSYBOX_BACKUP };

  it('never releases the finalizer while an image still needs copying, and never patches a deleting spec', () => {
    fc.assert(
      fc.property(
        fc.array(image, { minLength: 1, maxLength: 4 }),
        fc.array(image, { maxLength: 2 }),
        fc.boolean(),
        fc.boolean(),
        fc.subarray(Object.keys(knownTargets)),
        (containers, initContainers, finalized, deleting, knownSources) => {
          const known = Object.fromEntries(knownSources.map((source) => [source, knownTargets[source]!]));
          const object = workload({
            containers,
            initContainers,
            ...(finalized && { finalizers: [FINALIZER] }),
            ...(deleting && { deletionTimestamp: '2026-11-27T10:00:00Z' }),
          });
          const decision = decide('Deployment', object, context(known));
          if (decision.action === 'ignore') throw new Error('nothing here is ignored');
          if (decision.action === 'none') return;
          const patched = applyJsonPatch(object, decision.patch);
          if (decision.copy.length > 0) expect(patched.metadata?.finalizers ?? []).toEqual(object.metadata?.finalizers ?? []);
          if (deleting) expect(images(patched)).toEqual(images(object));
          for (const source of decision.copy) expect(known[source]).toBeUndefined();
          // Once the copies are known, the second round finishes the job.
          const all = { ...knownTargets, 'quay.io/a/b:2': `registry.example.com/backup/quay.io/a/b:2@${DIGEST_A}` };
          const second = decide('Deployment', patched, context(all));
          const final = second.action === 'reconcile' ? applyJsonPatch(patched, second.patch) : patched;
          expect(decide('Deployment', final, context(all)).action).toBe('none');
          expect(final.metadata?.finalizers ?? []).toEqual([]);
        },
      ),
    );
  });
});

describe('decide: every kind that runs images', () => {
  const known = { [NGINX]: NGINX_BACKUP, [BUSYBOX]: BUSYBOX_BACKUP };
  const containers = [{ name: 'app', image: 'nginx:1.27' }];

  it('points a StatefulSet and a CronJob (whose template is in jobTemplate) at their backups', () => {
    const statefulSet: Workload = {
      metadata: { name: 'db', namespace: 'a', annotations: {} },
      spec: { template: { spec: { containers } } },
    };
    const cronJob: Workload = {
      metadata: { name: 'nightly', namespace: 'a', annotations: {} },
      spec: { jobTemplate: { spec: { template: { spec: { containers } } } } },
    };
    expect(imagePath('CronJob', 'containers', 0)).toBe('/spec/jobTemplate/spec/template/spec/containers/0/image');
    for (const [kind, object] of [
      ['StatefulSet', statefulSet],
      ['CronJob', cronJob],
    ] as const) {
      const decision = reconcile(decide(kind, object, context(known)));
      expect(decision.mode).toBe('pin');
      const patched = applyJsonPatch(object, decision.patch);
      expect(podSpecOf(kind, patched)!.containers![0]!.image, kind).toBe(NGINX_BACKUP);
      expect(JSON.parse(patched.metadata!.annotations![ORIGINAL_IMAGES_ANNOTATION]!)).toEqual({ app: 'nginx:1.27' });
    }
  });

  it("backs up a Job and a Pod without an owner, and never rewrites them; a Pod's ephemeral containers too", () => {
    const job: Workload = {
      metadata: { name: 'once', namespace: 'a', finalizers: [FINALIZER] },
      spec: { template: { spec: { containers } } },
    };
    const pod: Workload = {
      metadata: { name: 'debug', namespace: 'a' },
      spec: { containers, ephemeralContainers: [{ name: 'shell', image: 'busybox:1.36' }] },
    };
    expect(reconcile(decide('Job', job, context())).copy).toEqual([NGINX]);
    expect(reconcile(decide('Pod', pod, context())).copy).toEqual([NGINX, BUSYBOX]);
    // Copied: a Job's finalizer is released, nothing else changes.
    const released = reconcile(decide('Job', job, context(known)));
    expect(released).toMatchObject({ mode: 'backup-only', replacements: [], releaseFinalizer: true });
    expect(released.patch.every((operation) => operation.path.startsWith('/metadata/finalizers/'))).toBe(true);
    expect(decide('Pod', pod, context(known))).toMatchObject({ action: 'none', mode: 'backup-only' });
  });

  it('leaves a Job or Pod that has an owner to it', () => {
    const owned = { controller: true, kind: 'CronJob', name: 'nightly' };
    const job: Workload = {
      metadata: { name: 'x', namespace: 'a', ownerReferences: [owned], finalizers: [FINALIZER] },
      spec: { template: { spec: { containers } } },
    };
    const pod: Workload = {
      metadata: { name: 'y', namespace: 'a', ownerReferences: [{ ...owned, kind: 'ReplicaSet' }] },
      spec: { containers },
    };
    expect(decide('Job', job, context())).toEqual({ action: 'none', mode: 'backup-only', slots: [] });
    expect(decide('Pod', pod, context())).toEqual({ action: 'none', mode: 'backup-only', slots: [] });
    // An owner that is not a controller (a plain reference) does not make it someone else's.
    const referenced: Workload = { ...pod, metadata: { ...pod.metadata, ownerReferences: [{ kind: 'ConfigMap', name: 'c' }] } };
    expect(reconcile(decide('Pod', referenced, context())).copy).toEqual([NGINX]);
  });
});

describe('decide: modes', () => {
  const known = { [NGINX]: NGINX_BACKUP };

  it('backup-only copies and releases the finalizer, and never changes the template', () => {
    const object = workload({ finalizers: [FINALIZER], annotations: { [MODE_ANNOTATION]: 'backup-only' } });
    expect(reconcile(decide('Deployment', object, context())).copy).toEqual([NGINX]);
    const done = reconcile(decide('Deployment', object, context(known)));
    expect(done).toMatchObject({ mode: 'backup-only', replacements: [], releaseFinalizer: true });
    expect(images(applyJsonPatch(object, done.patch))).toEqual(['nginx:1.27']);
  });

  it("takes the workload's annotation, else its namespace's, else the default; unknown values count as none", () => {
    const namespaceMode = (namespace: string) => (namespace === 'gitops' ? ('backup-only' as const) : undefined);
    const mode = (annotations: Record<string, string>, namespace = 'default', defaultMode: 'pin' | 'backup-only' = 'pin') =>
      modeFor('Deployment', workload({ namespace, annotations }), { ...context(), namespaceMode, defaultMode });
    expect(mode({})).toBe('pin');
    expect(mode({}, 'default', 'backup-only')).toBe('backup-only');
    expect(mode({}, 'gitops')).toBe('backup-only');
    expect(mode({ [MODE_ANNOTATION]: 'pin' }, 'gitops')).toBe('pin');
    expect(mode({ [MODE_ANNOTATION]: ' Backup-Only ' })).toBe('backup-only');
    expect(mode({ [MODE_ANNOTATION]: 'sometimes' }, 'gitops')).toBe('backup-only');
    expect(modeFor('Pod', { metadata: { annotations: { [MODE_ANNOTATION]: 'pin' } } }, context())).toBe('backup-only');
  });
});

describe('decide: the original images are recorded', () => {
  it('merges with what earlier patches recorded, guarded by a test of the recorded value', () => {
    const earlier = JSON.stringify({ c0: 'nginx:1.26' });
    const object = workload({
      containers: [NGINX_BACKUP, 'busybox:1.36'],
      annotations: { [ORIGINAL_IMAGES_ANNOTATION]: earlier, team: 'a' },
    });
    const decision = reconcile(decide('Deployment', object, context({ [BUSYBOX]: BUSYBOX_BACKUP })));
    const recorded = JSON.stringify({ c0: 'nginx:1.26', c1: 'busybox:1.36' });
    expect(decision.patch).toContainEqual({
      op: 'test',
      path: '/metadata/annotations/image-clone-controller.io~1original-images',
      value: earlier,
    });
    const patched = applyJsonPatch(object, decision.patch);
    expect(patched.metadata!.annotations).toEqual({ [ORIGINAL_IMAGES_ANNOTATION]: recorded, team: 'a' });
    // Someone rewrote the record meanwhile: the whole patch is refused.
    const meddled = structuredClone(object);
    meddled.metadata!.annotations![ORIGINAL_IMAGES_ANNOTATION] = '{}';
    expect(() => applyJsonPatch(meddled, decision.patch)).toThrow(PatchRejected);
  });

  it('adds the annotation map where there was none, guarded by the resourceVersion', () => {
    const object: Workload = { ...workload(), metadata: { name: 'web', namespace: 'default', resourceVersion: '7' } };
    const decision = reconcile(decide('Deployment', object, context({ [NGINX]: NGINX_BACKUP })));
    expect(decision.patch).toContainEqual({ op: 'test', path: '/metadata/resourceVersion', value: '7' });
    expect(applyJsonPatch(object, decision.patch).metadata!.annotations).toEqual({
      [ORIGINAL_IMAGES_ANNOTATION]: JSON.stringify({ c0: 'nginx:1.27' }),
    });
    expect(() => applyJsonPatch({ ...object, metadata: { ...object.metadata, resourceVersion: '8' } }, decision.patch)).toThrow(
      PatchRejected,
    );
  });
});
