// The whole controller for real, end to end: a real kube-apiserver with k8s/ applied by kubectl,
// real registries (a source with the example images, a Docker-Hub-like token-auth backup), the
// clone function and the bridge as separate processes, the bridge with its own ServiceAccount's
// token. Assertions are on what a user sees: `kubectl get -o json`, Events, the backup registry's
// content, the bridge's log lines.
//
// The scenarios share one cluster, the registries and the function, and run in order; each uses
// namespaces of its own. The bridge changes hands along the way (a crash, a standby taking over,
// a synchronous replica last), and the final test checks across all of it that no two replicas
// ever reconciled at once.

import { createHmac, randomBytes } from 'node:crypto';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { FINALIZER, OPT_OUT_ANNOTATION, type WorkloadKind } from '../../bridge/workload.ts';
import { CALLBACK_HEADERS } from '../../functions/contract/index.ts';
import { formatReference, parseReference } from '../../functions/contract/index.ts';
import { dockerImage, ociImage, type TestImage } from '../../testbed/images.ts';
import {
  CONTROLLER_NAMESPACE,
  EXAMPLE_IMAGES,
  sleep,
  startSystem,
  waitFor,
  type BridgeProcess,
  type LogLine,
  type System,
} from '../../testbed/system.ts';

interface Container {
  name: string;
  image: string;
}

interface Workload {
  metadata: {
    name: string;
    namespace: string;
    uid: string;
    resourceVersion: string;
    finalizers?: string[];
    deletionTimestamp?: string;
    annotations?: Record<string, string>;
  };
  spec: { template: { spec: { containers: Container[]; initContainers?: Container[] } } };
}

interface KubeEvent {
  type: string;
  reason: string;
  message: string;
  count?: number;
  reportingInstance?: string;
  involvedObject: { kind: string; name: string; uid?: string };
}

const normalise = (image: string) => formatReference(parseReference(image));

let system: System;
/** The kube-system DaemonSet without our finalizer, as created: nothing may ever write it. */
let untouchedVersion: string | undefined;
/** The bridge currently expected to lead (changes as scenarios replace it). */
let leader: BridgeProcess;

// --- helpers --------------------------------------------------------------------------------------

const kubectl = (args: readonly string[], input?: string) => system.kubectl(args, input);

async function get(kind: WorkloadKind, name: string, namespace: string): Promise<Workload | undefined> {
  const result = await system.cluster.kubectl(['get', kind.toLowerCase(), name, '-n', namespace, '-o', 'json']);
  if (result.code !== 0) {
    if (result.stderr.includes('NotFound')) return undefined;
    throw new Error(result.stderr);
  }
  return JSON.parse(result.stdout) as Workload;
}

const imagesOf = (workload: Workload) => [
  ...(workload.spec.template.spec.initContainers ?? []).map((container) => container.image),
  ...workload.spec.template.spec.containers.map((container) => container.image),
];

const holdsFinalizer = (workload: Workload) => (workload.metadata.finalizers ?? []).includes(FINALIZER);

function manifest(
  kind: WorkloadKind,
  name: string,
  namespace: string,
  images: readonly string[],
  options: { finalizer?: boolean; annotations?: Record<string, string> } = {},
): string {
  const labels = { app: name };
  return JSON.stringify({
    apiVersion: 'apps/v1',
    kind,
    metadata: {
      name,
      namespace,
      ...(options.finalizer !== false && { finalizers: [FINALIZER] }),
      ...(options.annotations && { annotations: options.annotations }),
    },
    spec: {
      selector: { matchLabels: labels },
      template: { metadata: { labels }, spec: { containers: images.map((image, index) => ({ name: `c${index}`, image })) } },
    },
  });
}

const apply = (text: string) => kubectl(['apply', '-f', '-'], text);

async function createNamespace(name: string): Promise<string> {
  await kubectl(['create', 'namespace', name]);
  return name;
}

/** Waits until the workload points at exactly `images` (in order) and our finalizer is gone. */
function converged(kind: WorkloadKind, name: string, namespace: string, images: readonly string[], timeoutMs = 60_000) {
  return waitFor(
    `${kind} ${namespace}/${name} to point at ${images.join(', ')} and be released`,
    async () => {
      const workload = await get(kind, name, namespace);
      if (workload === undefined) return undefined;
      return JSON.stringify(imagesOf(workload)) === JSON.stringify(images) && !holdsFinalizer(workload) ? workload : undefined;
    },
    timeoutMs,
  );
}

async function events(namespace: string, name: string): Promise<KubeEvent[]> {
  const list = JSON.parse(
    await kubectl(['get', 'events', '-n', namespace, '--field-selector', `involvedObject.name=${name}`, '-o', 'json']),
  ) as { items: KubeEvent[] };
  return list.items;
}

/** Seeds one small image under e2e/<name>:1; returns the reference workloads use and the image. */
async function seedImage(name: string, build: (seed: string) => TestImage = dockerImage) {
  const image = build(`e2e/${name}`);
  const reference = await system.seed(`e2e/${name}`, '1', image);
  return { reference, image, target: system.backupOf(reference, image.root.digest) };
}

/** Log lines of every bridge (since `since`) matching `msg` and the given fields. */
function logLines(msg: string, fields: Record<string, unknown> = {}, since = 0): LogLine[] {
  return system.logs.filter(
    (line) => line.time >= since && line.msg === msg && Object.entries(fields).every(([key, value]) => line[key] === value),
  );
}

/** Clone requests the bridges made for an image (their "starting cloning process" lines). */
const cloneRequestsFor = (image: string) => logLines('Image Cloner: starting cloning process', { image: normalise(image) });

/** Slows down every blob download of a source repository (the copy is "in progress" meanwhile). */
function slowDown(repository: string, ms: number) {
  return system.sourceProxy.addRule({
    path: new RegExp(`^/v2/${repository}/blobs/`),
    times: Infinity,
    fault: { kind: 'delay', ms },
  });
}

const blobRequestsFor = (repository: string) =>
  system.sourceProxy.requests.filter((request) => request.url.startsWith(`/v2/${repository}/blobs/`));

function signedCallback(secret: string, body: object, timestamp = Math.floor(Date.now() / 1000)) {
  const text = JSON.stringify(body);
  return {
    body: text,
    headers: {
      'content-type': 'application/json',
      [CALLBACK_HEADERS.job]: (body as { job: string }).job,
      [CALLBACK_HEADERS.timestamp]: String(timestamp),
      [CALLBACK_HEADERS.signature]: `sha256=${createHmac('sha256', secret).update(`${timestamp}.${text}`).digest('hex')}`,
    },
  };
}

async function postCallback(request: { body: string; headers: Record<string, string> }) {
  const response = await fetch(`${system.bridgeService.url}/callback`, {
    method: 'POST',
    headers: request.headers,
    body: request.body,
  });
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

async function startLeader(name: string, options: { callback?: boolean } = {}): Promise<BridgeProcess> {
  const bridge = await system.startBridge(name, options);
  await waitFor(`${name} to lead with synced informers`, () => bridge.serving(), 60_000);
  return bridge;
}

async function leaseHolder(): Promise<string> {
  return (
    await kubectl(['get', 'lease', 'image-clone-controller', '-n', CONTROLLER_NAMESPACE, '-o', 'jsonpath={.spec.holderIdentity}'])
  ).trim();
}

// --- the scenarios --------------------------------------------------------------------------------

describe('image clone controller, end to end', () => {
  beforeAll(async () => {
    system = await startSystem();
    leader = await startLeader('bridge-a');
  }, 30 * 60_000);

  afterAll(async () => {
    // E2E_LOG_DIR=/some/dir keeps every process's output for a look afterwards.
    if (process.env.E2E_LOG_DIR) await system?.writeLogs(process.env.E2E_LOG_DIR);
    await system?.stop();
  }, 120_000);

  // When a scenario fails, what the processes said is the first thing anyone needs.
  beforeEach(({ onTestFailed }) =>
    onTestFailed(() => {
      for (const bridge of system.bridges) {
        console.error(`--- bridge ${bridge.name} (last lines) ---\n${bridge.output().split('\n').slice(-60).join('\n')}`);
      }
      const functionLog = system.cloneFunction()?.logs() ?? '';
      console.error(`--- clone function (last lines) ---\n${functionLog.split('\n').slice(-40).join('\n')}`);
    }),
  );

  it('backs up, pins and releases the example Deployment and DaemonSet from k8s/setup', async () => {
    const started = Date.now();
    await apply(await system.exampleWorkloads());
    const images = new Map(
      EXAMPLE_IMAGES.map((example) => {
        const reference = `${system.sourceHost}/${example.repository}:${example.tag}`;
        const image = example.build();
        return [example.original, { reference, image, target: system.backupOf(reference, image.root.digest) }];
      }),
    );
    const nginx = images.get('nginx:1.27')!;
    const busybox = images.get('busybox:1.36')!;
    const exporter = images.get('quay.io/prometheus/node-exporter:v1.8.2')!;

    // The pod templates point at the backups, pinned by the digest of what the source serves.
    const deployment = await converged('Deployment', 'nginx', 'default', [nginx.target]);
    const daemonSet = await converged('DaemonSet', 'node-exporter', 'default', [busybox.target, exporter.target]);
    expect(nginx.target).toMatch(
      new RegExp(`^${system.backup.host}/backupacct/[a-z0-9_-]+library_nginx:1\\.27@sha256:[a-f0-9]{64}$`),
    );
    expect(deployment.metadata.finalizers ?? []).toEqual([]);
    expect(daemonSet.metadata.finalizers ?? []).toEqual([]);
    // Only the images changed: the rest of the spec is as applied.
    expect(daemonSet.spec.template.spec.containers[0]).toMatchObject({ name: 'node-exporter', args: ['--path.rootfs=/host'] });

    // The backup registry holds each image digest-exact: every platform, attestations included.
    for (const { reference, image } of images.values()) await system.verifyBackup(reference, image);

    // kubectl describe tells the story in Events.
    const nginxEvents = await waitFor('BackedUp and Released events on nginx', async () => {
      const list = await events('default', 'nginx');
      const reasons = list.map((event) => event.reason);
      return reasons.includes('BackedUp') && reasons.includes('Released') ? list : undefined;
    });
    expect(nginxEvents.every((event) => event.type === 'Normal' && event.involvedObject.uid === deployment.metadata.uid)).toBe(
      true,
    );
    expect(nginxEvents.find((event) => event.reason === 'BackedUp')!.message).toContain(`${nginx.reference} → ${nginx.target}`);
    const described = await kubectl(['describe', 'daemonset', 'node-exporter', '-n', 'default']);
    expect(described).toMatch(/Normal\s+BackedUp/);
    expect(described).toMatch(/Normal\s+Released/);

    // And the bridge's log, in the seed's words with fields.
    expect(
      logLines('DaemonSet reconciler: starting reconciliation', { namespace: 'default', image: busybox.reference }, started),
    ).not.toEqual([]);
    expect(logLines('Image Cloner: starting cloning process', { image: normalise(exporter.reference) }, started)).not.toEqual([]);
    expect(
      logLines('DaemonSet reconciler: reconciliation successfully finished', { namespace: 'default', name: 'node-exporter' }),
    ).not.toEqual([]);
    expect(logLines('Deployment reconciler: image pointed at its backup', { name: 'nginx' })[0]).toMatchObject({
      image: nginx.reference,
      target: nginx.target,
      digest: nginx.image.root.digest,
    });
    // One request per image: nothing was asked for twice.
    for (const { reference } of images.values()) expect(cloneRequestsFor(reference)).toHaveLength(1);
  });

  it('leaves kube-system, ignored namespaces and opted-out workloads alone', async () => {
    const kubeProxy = await seedImage('kube-proxy');
    const coredns = await seedImage('coredns');
    const optedOut = await seedImage('opted-out');
    const namespace = await createNamespace('e2e-ignored');
    await apply(manifest('DaemonSet', 'e2e-kube-proxy', 'kube-system', [kubeProxy.reference], { finalizer: false }));
    await apply(manifest('Deployment', 'e2e-coredns', 'kube-system', [coredns.reference]));
    await apply(
      manifest('Deployment', 'opted-out', namespace, [optedOut.reference], { annotations: { [OPT_OUT_ANNOTATION]: 'true' } }),
    );
    const plainBefore = (await get('DaemonSet', 'e2e-kube-proxy', 'kube-system'))!;
    untouchedVersion = plainBefore.metadata.resourceVersion;

    // Workloads carrying the finalizer are released without a copy and with their images as they were.
    await converged('Deployment', 'e2e-coredns', 'kube-system', [coredns.reference]);
    await converged('Deployment', 'opted-out', namespace, [optedOut.reference]);
    expect((await events(namespace, 'opted-out')).map((event) => event.message)).toContain(
      'Not backed up (opted out); finalizer removed',
    );

    // One without it is not written at all.
    await sleep(1_000);
    expect((await get('DaemonSet', 'e2e-kube-proxy', 'kube-system'))!.metadata.resourceVersion).toBe(
      plainBefore.metadata.resourceVersion,
    );
    // The controller's own namespace (IGNORE_NAMESPACES in the ConfigMap) is left alone too.
    const own = (await get('Deployment', 'image-cloner-deployment', CONTROLLER_NAMESPACE))!;
    expect(imagesOf(own)).toEqual(['ghcr.io/image-clone-controller/image-clone-controller:latest']);

    for (const image of [kubeProxy, coredns, optedOut]) {
      expect(cloneRequestsFor(image.reference)).toEqual([]);
      expect(await system.hasBackup(image.reference)).toBe(false);
    }
    expect(cloneRequestsFor('ghcr.io/image-clone-controller/image-clone-controller:latest')).toEqual([]);
  });

  it('leaves workloads that already run from the backup alone', async () => {
    const nginx = EXAMPLE_IMAGES[0]!;
    const backedUp = system.backupOf(`${system.sourceHost}/${nginx.repository}:${nginx.tag}`, nginx.build().root.digest);
    const namespace = await createNamespace('e2e-already');
    await apply(manifest('Deployment', 'pinned', namespace, [backedUp], { finalizer: false }));
    await apply(manifest('Deployment', 'pinned-held', namespace, [backedUp]));
    const before = (await get('Deployment', 'pinned', namespace))!;

    // Released (nothing to copy), images unchanged.
    await converged('Deployment', 'pinned-held', namespace, [backedUp]);
    await sleep(1_000);
    expect((await get('Deployment', 'pinned', namespace))!.metadata.resourceVersion).toBe(before.metadata.resourceVersion);
    expect(cloneRequestsFor(backedUp)).toEqual([]);
    expect(
      system.logs.filter((line) => line.msg === 'Image Cloner: starting cloning process' && line.namespace === namespace),
    ).toEqual([]);
  });

  it('keeps a workload deleted before its copy finished until the copy is done, then lets it go', async () => {
    const doomed = await seedImage('doomed');
    const namespace = await createNamespace('e2e-deleted');
    const slow = slowDown('e2e/doomed', 5_000);
    try {
      await apply(manifest('Deployment', 'doomed', namespace, [doomed.reference]));
      await waitFor('the copy to be under way', () => blobRequestsFor('e2e/doomed').length > 0);
      await kubectl(['delete', 'deployment', 'doomed', '-n', namespace, '--wait=false']);

      const deleting = (await get('Deployment', 'doomed', namespace))!;
      expect(deleting.metadata.deletionTimestamp).toBeTruthy();
      expect(deleting.metadata.finalizers).toContain(FINALIZER);
      // While the copy runs it stays, its spec untouched.
      await sleep(1_500);
      const stillThere = (await get('Deployment', 'doomed', namespace))!;
      expect(stillThere.metadata.finalizers).toContain(FINALIZER);
      expect(imagesOf(stillThere)).toEqual([doomed.reference]);
      expect(await system.hasBackup(doomed.reference)).toBe(false);

      await waitFor(
        'the deleted workload to disappear',
        async () => (await get('Deployment', 'doomed', namespace)) === undefined,
      );
    } finally {
      slow.remove();
    }
    // Gone only once its image was safe.
    await system.verifyBackup(doomed.reference, doomed.image);
    const messages = await waitFor('the Released event', async () => {
      const list = (await events(namespace, 'doomed')).map((event) => event.message);
      return list.length > 0 ? list : undefined;
    });
    expect(messages).toContain('Images backed up; finalizer removed, deletion proceeds');
  });

  it('converges with nothing lost after the function was down for a while', async () => {
    const web = await seedImage('outage-web');
    const agent = await seedImage('outage-agent', ociImage);
    const namespace = await createNamespace('e2e-outage');
    await system.stopFunction();
    try {
      await apply(manifest('Deployment', 'web', namespace, [web.reference]));
      await apply(manifest('DaemonSet', 'agent', namespace, [agent.reference]));
      // The failure is visible: a Warning event, counted as the bridge keeps trying.
      const failed = await waitFor(
        'a repeated BackupFailed event',
        async () => (await events(namespace, 'web')).find((event) => event.reason === 'BackupFailed' && (event.count ?? 1) >= 2),
        40_000,
      );
      expect(failed.type).toBe('Warning');
      expect(failed.message).toContain(normalise(web.reference));
      for (const [kind, name, image] of [
        ['Deployment', 'web', web.reference],
        ['DaemonSet', 'agent', agent.reference],
      ] as const) {
        const workload = (await get(kind, name, namespace))!;
        expect(imagesOf(workload)).toEqual([image]);
        expect(holdsFinalizer(workload)).toBe(true);
      }
    } finally {
      await system.startFunction();
    }
    await converged('Deployment', 'web', namespace, [web.target]);
    await converged('DaemonSet', 'agent', namespace, [agent.target]);
    await system.verifyBackup(web.reference, web.image);
    await system.verifyBackup(agent.reference, agent.image);
  });

  it('finishes the job when the bridge crashes mid-copy and a new one takes over', async () => {
    const crash = await seedImage('mid-copy');
    const namespace = await createNamespace('e2e-crash');
    const slow = slowDown('e2e/mid-copy', 3_000);
    try {
      await apply(manifest('Deployment', 'mid-copy', namespace, [crash.reference]));
      await waitFor('the copy to be under way', () => blobRequestsFor('e2e/mid-copy').length > 0);
      const crashed = leader;
      await crashed.kill();
      // A new pod: another identity, which gets the lease once the dead one's expires.
      leader = await startLeader('bridge-b');
      expect(await leaseHolder()).toBe('bridge-b');
    } finally {
      slow.remove();
    }
    await converged('Deployment', 'mid-copy', namespace, [crash.target]);
    expect(logLines('Deployment reconciler: image pointed at its backup', { bridge: 'bridge-b', name: 'mid-copy' })).not.toEqual(
      [],
    );
    await system.verifyBackup(crash.reference, crash.image);
  });

  it('refuses forged, replayed and mismatching callbacks, and patches nothing from them', async () => {
    const quick = await seedImage('callback-quick');
    const held = await seedImage('callback-held');
    const namespace = await createNamespace('e2e-callbacks');
    const heldKey = `Deployment/${namespace}/held`;
    const heldSource = normalise(held.reference);

    // A genuine callback, as it crossed the network (the Service saw it).
    await apply(manifest('Deployment', 'quick', namespace, [quick.reference]));
    const quickWorkload = await converged('Deployment', 'quick', namespace, [quick.target]);
    const genuine = await waitFor('the genuine callback for quick', () =>
      system.bridgeService.callbacks.find(
        (callback) => callback.status === 200 && callback.body.includes(`"Deployment/${namespace}/quick"`),
      ),
    );

    const slow = slowDown('e2e/callback-held', 6_000);
    try {
      await apply(manifest('Deployment', 'held', namespace, [held.reference]));
      await waitFor('the copy to be under way', () => blobRequestsFor('e2e/callback-held').length > 0);
      const fakeDigest = `sha256:${randomBytes(32).toString('hex')}`;
      const results = (target: string, digest: string) => [
        { source: heldSource, target, digest, status: 'copied', bytes: 1, ms: 1 },
      ];

      // Forged: the right mapping, but signed without the shared secret.
      const forged = await postCallback(
        signedCallback(randomBytes(32).toString('hex'), {
          job: 'forged-1',
          context: { workloads: [heldKey] },
          results: results(system.backupOf(held.reference, fakeDigest), fakeDigest),
        }),
      );
      expect(forged.status).toBe(401);

      // Replayed: the genuine callback once more, byte for byte.
      const replayed = await postCallback({ body: genuine.body, headers: genuine.headers });
      expect(replayed.status).toBe(409);

      // Mismatching: properly signed, but pointing the workload somewhere the bridge would not.
      const elsewhere = `${system.backup.host}/backupacct/somewhere-else:1@${held.image.root.digest}`;
      const mismatching = await postCallback(
        signedCallback(system.secrets.callbackSecret, {
          job: 'mismatching-1',
          context: { workloads: [heldKey] },
          results: results(elsewhere, held.image.root.digest),
        }),
      );
      expect(mismatching.status).toBe(200);
      expect(mismatching.body.rejected).toEqual([{ source: heldSource, reason: 'target_mismatch' }]);

      // None of them changed anything.
      const heldNow = (await get('Deployment', 'held', namespace))!;
      expect(imagesOf(heldNow)).toEqual([held.reference]);
      expect(holdsFinalizer(heldNow)).toBe(true);
      expect((await get('Deployment', 'quick', namespace))!.metadata.resourceVersion).toBe(
        quickWorkload.metadata.resourceVersion,
      );
    } finally {
      slow.remove();
    }

    // The real copy then lands where the bridge itself says it must, with the real digest.
    await converged('Deployment', 'held', namespace, [held.target]);
    const backedUp = (await events(namespace, 'held')).filter((event) => event.reason === 'BackedUp');
    expect(backedUp.map((event) => event.message)).toEqual([`Images backed up and pinned: ${held.reference} → ${held.target}`]);
    expect(logLines('callback refused', { reason: 'bad_signature' })).not.toEqual([]);
    expect(logLines('callback refused', { reason: 'replay' })).not.toEqual([]);
    expect(logLines('Image Cloner: result refused', { image: heldSource, reason: 'target_mismatch' })).not.toEqual([]);
    const metrics = await leader.metrics();
    expect(metrics).toMatch(/image_clone_bridge_callback_rejections_total\{reason="bad_signature"\} [1-9]/);
    expect(metrics).toMatch(/image_clone_bridge_callback_rejections_total\{reason="replay"\} [1-9]/);
    expect(metrics).toMatch(/image_clone_bridge_callback_rejections_total\{reason="target_mismatch"\} [1-9]/);
  });

  it('runs two replicas of which only the lease holder reconciles, and hands over on shutdown', async () => {
    const one = await seedImage('replicas-one');
    const two = await seedImage('replicas-two');
    const namespace = await createNamespace('e2e-replicas');
    const standby = await system.startBridge('bridge-c');
    // Longer than its retry period (2 s): it has tried for the lease and found it held.
    await sleep(3_000);
    expect(await leaseHolder()).toBe(leader.name);
    expect(await leader.serving()).toBe(true);
    // Every replica is Ready; the Service reaches the leader only (the label on its Pod).
    expect(await standby.ready()).toBe(true);
    expect(await standby.serving()).toBe(false);

    await apply(manifest('Deployment', 'one', namespace, [one.reference]));
    await converged('Deployment', 'one', namespace, [one.target]);
    const oneEvents = await waitFor('events on one', async () => {
      const list = await events(namespace, 'one');
      return list.some((event) => event.reason === 'Released') ? list : undefined;
    });
    expect(new Set(oneEvents.map((event) => event.reportingInstance))).toEqual(new Set([leader.name]));
    // The standby watches nothing and writes nothing while it waits.
    expect(standby.logs.filter((line) => line.msg === 'watching workloads' || / reconciler: /.test(line.msg))).toEqual([]);

    // A rollout replaces the leader: it releases the lease and the standby takes over at once.
    const handedOver = Date.now();
    await leader.stop();
    expect(leader.logs.map((line) => line.msg)).toContain('released the lease');
    await waitFor('the standby to lead', () => standby.serving(), 20_000);
    expect(Date.now() - handedOver).toBeLessThan(15_000); // sooner than a lease expiry
    expect(await leaseHolder()).toBe('bridge-c');
    leader = standby;

    await apply(manifest('Deployment', 'two', namespace, [two.reference]));
    await converged('Deployment', 'two', namespace, [two.target]);
    const twoEvents = await waitFor('events on two', async () => {
      const list = await events(namespace, 'two');
      return list.some((event) => event.reason === 'Released') ? list : undefined;
    });
    expect(new Set(twoEvents.map((event) => event.reportingInstance))).toEqual(new Set(['bridge-c']));
  });

  it('works synchronously, without callbacks, as with a function on a FaaS', async () => {
    const image = await seedImage('synchronous');
    const namespace = await createNamespace('e2e-synchronous');
    await leader.stop();
    leader = await startLeader('bridge-d', { callback: false });
    expect(leader.logs.find((line) => line.msg === 'bridge listening')).toMatchObject({ mode: 'synchronous' });
    const callbacksBefore = system.bridgeService.callbacks.length;

    await apply(manifest('Deployment', 'sync', namespace, [image.reference]));
    await converged('Deployment', 'sync', namespace, [image.target]);
    await system.verifyBackup(image.reference, image.image);
    expect(logLines('Image Cloner: image backed up', { bridge: 'bridge-d', image: normalise(image.reference) })).not.toEqual([]);
    // The result came back in the answer: no callback reached the bridge's Service for it.
    expect(system.bridgeService.callbacks.slice(callbacksBefore).filter((callback) => callback.body.includes(namespace))).toEqual(
      [],
    );
  });

  it('never had two replicas reconciling at once, and never touched the ignored workloads', async () => {
    // Leadership terms from the logs: "became the leader" until "stopped leading" (or a crash).
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
      if (from !== undefined) spans.push({ bridge: bridge.name, from, to: bridge.killedAt ?? Date.now() });
      return spans;
    });
    expect(new Set(terms.map((term) => term.bridge))).toEqual(new Set(['bridge-a', 'bridge-b', 'bridge-c', 'bridge-d']));
    for (const a of terms) {
      for (const b of terms) {
        if (a.bridge !== b.bridge) expect(a.to <= b.from || b.to <= a.from, `${a.bridge} and ${b.bridge} overlap`).toBe(true);
      }
    }
    // Every write a bridge made happened while no other replica led.
    const writes = system.logs.filter((line) => / reconciler: (image pointed at its backup|finalizer released)$/.test(line.msg));
    expect(writes.length).toBeGreaterThan(10);
    for (const write of writes) {
      const others = terms.filter((term) => term.bridge !== write.bridge && term.from <= write.time && write.time <= term.to);
      expect(others, `${write.bridge} wrote ${write.namespace}/${write.name} during another's term`).toEqual([]);
    }

    // Across every restart and relist, the plain kube-system workload was never written.
    const plain = (await get('DaemonSet', 'e2e-kube-proxy', 'kube-system'))!;
    expect(imagesOf(plain)).toEqual([`${system.sourceHost}/e2e/kube-proxy:1`]);
    expect(plain.metadata.resourceVersion).toBe(untouchedVersion);
    expect(cloneRequestsFor(`${system.sourceHost}/e2e/kube-proxy:1`)).toEqual([]);
  });
});
