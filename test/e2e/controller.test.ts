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
import {
  FINALIZER,
  MODE_ANNOTATION,
  OPT_OUT_ANNOTATION,
  ORIGINAL_IMAGES_ANNOTATION,
  type WorkloadKind,
} from '../../bridge/workload.ts';
import { VERSION } from '../../bridge/version.ts';
import { CALLBACK_HEADERS } from '../../functions/contract/index.ts';
import { formatReference, parseReference } from '../../functions/contract/index.ts';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { dockerImage, ociImage, pushImage, type TestImage } from '../../testbed/images.ts';
import { REPO_ROOT } from '../../testbed/processes.ts';
import {
  containersOf,
  CONTROLLER_NAMESPACE,
  EXAMPLE_IMAGES,
  podSpecOf,
  sleep,
  startSystem,
  waitFor,
  type BridgeProcess,
  type LogLine,
  type System,
  type Workload,
} from '../../testbed/system.ts';

interface KubeEvent {
  type: string;
  reason: string;
  message: string;
  count?: number;
  reportingInstance?: string;
  involvedObject: { kind: string; name: string; uid?: string };
}

const normalise = (image: string) => formatReference(parseReference(image));

interface NetworkPolicyPeer {
  podSelector?: { matchLabels?: Record<string, string> };
  namespaceSelector?: { matchLabels?: Record<string, string> };
  ipBlock?: { cidr: string; except?: string[] };
}

interface NetworkPolicySpec {
  podSelector: { matchLabels?: Record<string, string> };
  ingress?: { from?: NetworkPolicyPeer[] }[];
  egress?: { to?: NetworkPolicyPeer[] }[];
}

/** Runs a script of the repository as a user would, with the machine's PATH. */
function runScript(
  script: string,
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(join(REPO_ROOT, script), args, {
      cwd: REPO_ROOT,
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.on('close', (code) => resolve({ code, output }));
  });
}

let system: System;
/** The kube-system DaemonSet without our finalizer, as created: nothing may ever write it. */
let untouchedVersion: string | undefined;
/** The bridge currently expected to lead (changes as scenarios replace it). */
let leader: BridgeProcess;

// --- helpers --------------------------------------------------------------------------------------

const kubectl = (args: readonly string[], input?: string) => system.kubectl(args, input);

const get = (kind: WorkloadKind, name: string, namespace: string) => system.workload(kind, name, namespace);

const imagesOf = (workload: Workload) => containersOf(workload).map((container) => container.image);

const holdsFinalizer = (workload: Workload) => (workload.metadata.finalizers ?? []).includes(FINALIZER);

function manifest(
  kind: WorkloadKind,
  name: string,
  namespace: string,
  images: readonly string[],
  options: { finalizer?: boolean; annotations?: Record<string, string>; owner?: { kind: string; name: string } } = {},
): string {
  const labels = { app: name };
  const containers = images.map((image, index) => ({ name: `c${index}`, image }));
  const template = (restartPolicy?: string) => ({
    metadata: { labels },
    spec: { containers, ...(restartPolicy && { restartPolicy }) },
  });
  const specs: Record<WorkloadKind, unknown> = {
    Deployment: { selector: { matchLabels: labels }, template: template() },
    DaemonSet: { selector: { matchLabels: labels }, template: template() },
    StatefulSet: { selector: { matchLabels: labels }, serviceName: name, template: template() },
    CronJob: { schedule: '0 3 * * *', jobTemplate: { spec: { template: template('OnFailure') } } },
    Job: { template: template('Never') },
    Pod: { containers },
  };
  return JSON.stringify({
    apiVersion: {
      Deployment: 'apps/v1',
      DaemonSet: 'apps/v1',
      StatefulSet: 'apps/v1',
      CronJob: 'batch/v1',
      Job: 'batch/v1',
      Pod: 'v1',
    }[kind],
    kind,
    metadata: {
      name,
      namespace,
      ...(options.finalizer !== false && { finalizers: [FINALIZER] }),
      ...(options.annotations && { annotations: options.annotations }),
      ...(options.owner && {
        ownerReferences: [
          { apiVersion: 'apps/v1', ...options.owner, uid: '0c0ffee0-0000-4000-8000-000000000000', controller: true },
        ],
      }),
    },
    spec: specs[kind],
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
  return (await lease()).holderIdentity ?? '';
}

interface LeaseSpec {
  holderIdentity?: string;
  acquireTime?: string;
  renewTime?: string;
  leaseDurationSeconds?: number;
}

async function lease(): Promise<LeaseSpec> {
  const json = await kubectl(['get', 'lease', 'image-clone-controller', '-n', CONTROLLER_NAMESPACE, '-o', 'json']);
  return (JSON.parse(json) as { spec?: LeaseSpec }).spec ?? {};
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
  beforeEach(({ onTestFailed }) => onTestFailed(() => console.error(system.recentOutput())));

  it('backs up, pins and releases the example Deployment, DaemonSet, StatefulSet and CronJob from k8s/setup', async () => {
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
    await converged('StatefulSet', 'redis', 'default', [images.get('redis:7.4')!.target]);
    await converged('CronJob', 'nightly-report', 'default', [images.get('alpine:3.20')!.target]);
    expect(nginx.target).toMatch(
      new RegExp(`^${system.backup.host}/backupacct/[a-z0-9_-]+library_nginx:1\\.27@sha256:[a-f0-9]{64}$`),
    );
    expect(deployment.metadata.finalizers ?? []).toEqual([]);
    expect(daemonSet.metadata.finalizers ?? []).toEqual([]);
    // Only the images changed: the rest of the spec is as applied.
    expect(podSpecOf(daemonSet).containers[0]).toMatchObject({ name: 'node-exporter', args: ['--path.rootfs=/host'] });

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

  it('never writes kube-system, and leaves ignored namespaces and opted-out workloads alone', async () => {
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
    const corednsBefore = (await get('Deployment', 'e2e-coredns', 'kube-system'))!;
    untouchedVersion = plainBefore.metadata.resourceVersion;

    // An opted-out workload carrying the finalizer is released without a copy, its images as they were.
    await converged('Deployment', 'opted-out', namespace, [optedOut.reference]);
    expect((await events(namespace, 'opted-out')).map((event) => event.message)).toContain(
      'Not backed up (opted out); finalizer removed',
    );

    // kube-system is never written, its finalizer not even released (the README says how its
    // owner removes it), and gets no Event; by the time the opted-out one was released, the bridge
    // had looked at these too.
    await sleep(1_000);
    expect((await get('DaemonSet', 'e2e-kube-proxy', 'kube-system'))!.metadata.resourceVersion).toBe(
      plainBefore.metadata.resourceVersion,
    );
    const corednsNow = (await get('Deployment', 'e2e-coredns', 'kube-system'))!;
    expect(corednsNow.metadata.resourceVersion).toBe(corednsBefore.metadata.resourceVersion);
    expect(holdsFinalizer(corednsNow)).toBe(true);
    expect(await events('kube-system', 'e2e-coredns')).toEqual([]);
    expect(cloneRequestsFor(coredns.reference)).toEqual([]);
    // The controller's own namespace (IGNORE_NAMESPACES in the ConfigMap) is left alone too.
    const own = (await get('Deployment', 'image-cloner-deployment', CONTROLLER_NAMESPACE))!;
    expect(imagesOf(own)).toEqual([`ghcr.io/image-clone-controller/image-clone-controller:${VERSION}`]);

    for (const image of [kubeProxy, coredns, optedOut]) {
      expect(cloneRequestsFor(image.reference)).toEqual([]);
      expect(await system.hasBackup(image.reference)).toBe(false);
    }
    expect(cloneRequestsFor('ghcr.io/image-clone-controller/image-clone-controller:latest')).toEqual([]);
  });

  it('backs up every kind: StatefulSets and CronJobs pinned, Jobs and Pods without an owner as they are', async () => {
    const database = await seedImage('database');
    const nightly = await seedImage('nightly', ociImage);
    const once = await seedImage('once');
    const loose = await seedImage('loose');
    const debugger_ = await seedImage('debugger');
    const owned = await seedImage('owned-by-a-replicaset');
    const namespace = await createNamespace('e2e-kinds');
    await apply(manifest('StatefulSet', 'db', namespace, [database.reference]));
    await apply(manifest('CronJob', 'nightly', namespace, [nightly.reference]));
    await apply(manifest('Job', 'once', namespace, [once.reference]));
    await apply(manifest('Pod', 'loose', namespace, [loose.reference], { finalizer: false }));
    await apply(
      manifest('Pod', 'web-7d9-x', namespace, [owned.reference], {
        finalizer: false,
        owner: { kind: 'ReplicaSet', name: 'web-7d9' },
      }),
    );
    await kubectl([
      'patch',
      'pod',
      'loose',
      '-n',
      namespace,
      '--subresource=ephemeralcontainers',
      '--type=strategic',
      '-p',
      JSON.stringify({ spec: { ephemeralContainers: [{ name: 'debug', image: debugger_.reference }] } }),
    ]);

    // Pinned by digest, released, and what ran before recorded.
    const db = await converged('StatefulSet', 'db', namespace, [database.target]);
    const cron = await converged('CronJob', 'nightly', namespace, [nightly.target]);
    expect(JSON.parse(db.metadata.annotations![ORIGINAL_IMAGES_ANNOTATION]!)).toEqual({ c0: database.reference });
    expect(JSON.parse(cron.metadata.annotations![ORIGINAL_IMAGES_ANNOTATION]!)).toEqual({ c0: nightly.reference });
    expect(logLines('StatefulSet reconciler: starting reconciliation', { namespace }).length).toBeGreaterThan(0);
    expect(logLines('CronJob reconciler: reconciliation successfully finished', { namespace }).length).toBeGreaterThan(0);

    // A Job and a Pod are copied, told so, released, and never rewritten; the Pod's ephemeral
    // container too.
    const told = async (name: string, target: string) =>
      (await events(namespace, name)).some((event) => event.reason === 'BackedUp' && event.message.includes(target));
    await waitFor('the Job and the Pod to hear where their copies are', async () =>
      (await told('once', once.target)) && (await told('loose', loose.target)) && (await told('loose', debugger_.target))
        ? true
        : undefined,
    );
    const job = (await get('Job', 'once', namespace))!;
    expect(imagesOf(job)).toEqual([once.reference]);
    expect(holdsFinalizer(job)).toBe(false);
    expect(imagesOf((await get('Pod', 'loose', namespace))!)).toEqual([loose.reference]);
    for (const seeded of [database, nightly, once, loose, debugger_]) await system.verifyBackup(seeded.reference, seeded.image);

    // A ReplicaSet's Pod is its owner's business: not copied, no Event of its own.
    expect(cloneRequestsFor(owned.reference)).toEqual([]);
    expect(await events(namespace, 'web-7d9-x')).toEqual([]);
  });

  it('backs up only, template untouched, where the namespace or the workload says backup-only', async () => {
    const gitops = await seedImage('gitops-app');
    const pinned = await seedImage('gitops-pinned');
    const own = await seedImage('own-choice');
    const namespace = await createNamespace('e2e-gitops');
    await kubectl(['annotate', 'namespace', namespace, `${MODE_ANNOTATION}=backup-only`]);
    const plain = await createNamespace('e2e-own-choice');
    await apply(manifest('Deployment', 'app', namespace, [gitops.reference]));
    await apply(manifest('Deployment', 'pinned', namespace, [pinned.reference], { annotations: { [MODE_ANNOTATION]: 'pin' } }));
    await apply(manifest('Deployment', 'own', plain, [own.reference], { annotations: { [MODE_ANNOTATION]: 'backup-only' } }));

    // The workload's own annotation wins over its namespace's.
    await converged('Deployment', 'pinned', namespace, [pinned.target]);
    // Copied and released, the template as it was, nothing recorded: nothing was replaced.
    for (const [name, ns, seeded] of [
      ['app', namespace, gitops],
      ['own', plain, own],
    ] as const) {
      const workload = await converged('Deployment', name, ns, [seeded.reference]);
      expect(workload.metadata.annotations?.[ORIGINAL_IMAGES_ANNOTATION]).toBeUndefined();
      await system.verifyBackup(seeded.reference, seeded.image);
      expect((await events(ns, name)).map((event) => event.message)).toContainEqual(expect.stringContaining(seeded.target));
    }
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
    // Had it waited for the lease to expire instead, it could not have acquired it before the
    // leader's last renewal plus the lease's duration (the clocks the two wrote are this one).
    const held = await lease();
    await leader.stop();
    expect(leader.logs.map((line) => line.msg)).toContain('released the lease');
    await waitFor('the standby to lead', () => standby.serving(), 20_000);
    const taken = await lease();
    expect(taken.holderIdentity).toBe('bridge-c');
    const expiry = Date.parse(held.renewTime!) + held.leaseDurationSeconds! * 1000;
    expect(Date.parse(taken.acquireTime!)).toBeLessThan(expiry);
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

  it('copies a private image with the pull secret of the workload that names it, and refuses one without', async () => {
    const { privateSource } = system;
    const image = dockerImage('e2e/private-app');
    await pushImage(privateSource.url, 'team/private-app', image, { tag: '1', credentials: privateSource.credentials! });
    const reference = `${privateSource.host}/team/private-app:1`;
    const target = system.backupOf(reference, image.root.digest);
    const pullSecret = (namespace: string) =>
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'Secret',
        type: 'kubernetes.io/dockerconfigjson',
        metadata: { name: 'regcred', namespace },
        stringData: { '.dockerconfigjson': JSON.stringify({ auths: { [privateSource.host]: privateSource.credentials } }) },
      });
    const withSecrets = (namespace: string, name: string, secrets: string[]) => {
      const object = JSON.parse(manifest('Deployment', name, namespace, [reference])) as { spec: { template: { spec: object } } };
      if (secrets.length > 0)
        Object.assign(object.spec.template.spec, { imagePullSecrets: secrets.map((secret) => ({ name: secret })) });
      return JSON.stringify(object);
    };

    // Its own imagePullSecrets; its ServiceAccount's: copied and pinned.
    const teamA = await createNamespace('e2e-team-a');
    await apply(pullSecret(teamA));
    await apply(withSecrets(teamA, 'app', ['regcred']));
    const teamC = await createNamespace('e2e-team-c');
    await apply(pullSecret(teamC));
    await apply(
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'ServiceAccount',
        metadata: { name: 'default', namespace: teamC },
        imagePullSecrets: [{ name: 'regcred' }],
      }),
    );
    await apply(withSecrets(teamC, 'app', []));
    await converged('Deployment', 'app', teamA, [target]);
    await converged('Deployment', 'app', teamC, [target]);
    await system.verifyBackup(reference, image);

    // Without a secret, the copy that exists already serves it no better: the source refuses it,
    // and its owner is told what to do.
    const teamB = await createNamespace('e2e-team-b');
    await apply(withSecrets(teamB, 'app', []));
    const warning = await waitFor('a Warning on the workload without a pull secret', async () =>
      (await events(teamB, 'app')).find((event) => event.reason === 'BackupFailed'),
    );
    expect(warning.message).toContain(
      `${privateSource.host} wants credentials: add an imagePullSecret for ${privateSource.host}`,
    );
    const refused = (await get('Deployment', 'app', teamB))!;
    expect(imagesOf(refused)).toEqual([reference]);
    expect(holdsFinalizer(refused)).toBe(true);

    // The credentials never reached a log line.
    const password = privateSource.credentials!.password;
    expect(
      logLines('Image Cloner: starting cloning process', { image: reference }).some((line) => line.pullSecret === 'regcred'),
    ).toBe(true);
    for (const bridge of system.bridges) expect(bridge.output()).not.toContain(password);
    expect(system.cloneFunction()!.logs()).toContain(reference);
    expect(system.cloneFunction()!.logs()).not.toContain(password);
  });

  it('lets a workload go whose image is gone at the source once it is deleted, with a Warning', async () => {
    const namespace = await createNamespace('e2e-vanished');
    const gone = `${system.sourceHost}/e2e/never-pushed:1`;
    await apply(manifest('Deployment', 'orphan', namespace, [gone]));
    await waitFor('the copy to fail', async () =>
      (await events(namespace, 'orphan')).some((event) => event.reason === 'BackupFailed') ? true : undefined,
    );
    // Not being deleted: protected, as always.
    expect(holdsFinalizer((await get('Deployment', 'orphan', namespace))!)).toBe(true);
    await kubectl(['delete', 'deployment', 'orphan', '-n', namespace, '--wait=false']);
    await waitFor('the deleted workload to go', async () =>
      (await get('Deployment', 'orphan', namespace)) === undefined ? true : undefined,
    );
    const released = (await events(namespace, 'orphan')).find((event) => event.reason === 'Released')!;
    expect(released).toMatchObject({ type: 'Warning' });
    expect(released.message).toContain('gone at the source');
  });

  it("holds the bridge's ServiceAccount to its job through the admission guardrails, whatever its code", async () => {
    const namespace = await createNamespace('e2e-guardrails');
    await apply(manifest('Deployment', 'app', namespace, ['nginx:1.27'], { annotations: { team: 'a' } }));
    await apply(manifest('CronJob', 'nightly', namespace, ['busybox:1.36']));
    const asBridge = async (args: string[]) => {
      const result = await system.cluster.kubectl([
        ...args,
        `--as=system:serviceaccount:${CONTROLLER_NAMESPACE}:image-cloner`,
        '--dry-run=server',
      ]);
      return result.code === 0 ? 'allowed' : result.stderr.replace(/^[\s\S]*denied request: /, '').trim();
    };
    const patch = (kind: string, name: string, ns: string, operations: object[]) =>
      asBridge(['patch', kind, name, '-n', ns, '--type=json', '-p', JSON.stringify(operations)]);
    const pinned = `${system.backupLocation.registry}/${system.backupLocation.namespace}/nginx:1.27@sha256:${'a'.repeat(64)}`;
    const image = '/spec/template/spec/containers/0/image';

    expect(await patch('deployment', 'app', namespace, [{ op: 'replace', path: image, value: pinned }])).toBe('allowed');
    expect(
      await patch('cronjob', 'nightly', namespace, [
        { op: 'replace', path: '/spec/jobTemplate/spec/template/spec/containers/0/image', value: pinned },
      ]),
    ).toBe('allowed');
    expect(
      await patch('deployment', 'app', namespace, [
        { op: 'add', path: `/metadata/annotations/${ORIGINAL_IMAGES_ANNOTATION.replace('/', '~1')}`, value: '{}' },
      ]),
    ).toBe('allowed');
    expect(await patch('deployment', 'app', namespace, [{ op: 'remove', path: '/metadata/finalizers/0' }])).toBe('allowed');

    const denied: [string, Promise<string>][] = [
      [
        'an image elsewhere',
        patch('deployment', 'app', namespace, [
          { op: 'replace', path: image, value: `evil.example.com/x@sha256:${'a'.repeat(64)}` },
        ]),
      ],
      [
        'a backup not pinned by digest',
        patch('deployment', 'app', namespace, [{ op: 'replace', path: image, value: pinned.replace(/@.*/, '') }]),
      ],
      [
        'a command',
        patch('deployment', 'app', namespace, [{ op: 'add', path: '/spec/template/spec/containers/0/command', value: ['sh'] }]),
      ],
      ['the replicas', patch('deployment', 'app', namespace, [{ op: 'add', path: '/spec/replicas', value: 9 }])],
      ['a schedule', patch('cronjob', 'nightly', namespace, [{ op: 'replace', path: '/spec/schedule', value: '* * * * *' }])],
      [
        'another annotation',
        patch('deployment', 'app', namespace, [{ op: 'replace', path: '/metadata/annotations/team', value: 'b' }]),
      ],
      ['a label', patch('deployment', 'app', namespace, [{ op: 'add', path: '/metadata/labels', value: { x: 'y' } }])],
      ['kube-system', patch('daemonset', 'e2e-kube-proxy', 'kube-system', [{ op: 'replace', path: image, value: pinned }])],
    ];
    const messages = Object.fromEntries(await Promise.all(denied.map(async ([what, answer]) => [what, await answer])));
    expect(messages).toMatchObject({
      'an image elsewhere': expect.stringContaining('may only point images at the backup'),
      'a backup not pinned by digest': expect.stringContaining('may only point images at backups pinned by digest'),
      'a command': expect.stringContaining("may change nothing in a workload's spec but its container images"),
      'the replicas': expect.stringContaining("may change nothing in a workload's spec but its container images"),
      'a schedule': expect.stringContaining("may change nothing in a workload's spec but its container images"),
      'another annotation': expect.stringContaining('may change only its own annotations'),
      'a label': expect.stringContaining("may not change a workload's labels or owners"),
      'kube-system': expect.stringContaining('writes nothing in kube-system'),
    });
    const event = await system.cluster.kubectl(
      ['create', '-f', '-', `--as=system:serviceaccount:${CONTROLLER_NAMESPACE}:image-cloner`, '--dry-run=server'],
      {
        input: JSON.stringify({
          apiVersion: 'v1',
          kind: 'Event',
          metadata: { name: 'probe.1', namespace: 'kube-system' },
          involvedObject: { kind: 'DaemonSet', name: 'e2e-kube-proxy', namespace: 'kube-system' },
          reason: 'BackedUp',
          message: 'probe',
          type: 'Normal',
        }),
      },
    );
    expect(event.stderr).toContain('writes nothing in kube-system');
    // Events elsewhere stay allowed.
    const elsewhere = await system.cluster.kubectl(
      ['create', '-f', '-', `--as=system:serviceaccount:${CONTROLLER_NAMESPACE}:image-cloner`, '--dry-run=server'],
      {
        input: JSON.stringify({
          apiVersion: 'v1',
          kind: 'Event',
          metadata: { name: 'probe.1', namespace },
          involvedObject: { kind: 'Deployment', name: 'app', namespace },
          reason: 'BackedUp',
          message: 'probe',
          type: 'Normal',
        }),
      },
    );
    expect(elsewhere.code, elsewhere.stderr).toBe(0);
  });

  it('ships NetworkPolicies that apply and select the function and the bridge', async () => {
    const applied = JSON.parse(
      await kubectl(['apply', '--dry-run=server', '-o', 'json', '-f', join(REPO_ROOT, 'k8s/setup/network-policies.yml')]),
    ) as { items: { metadata: { name: string }; spec: NetworkPolicySpec }[] };
    const policies = Object.fromEntries(applied.items.map((item) => [item.metadata.name, item.spec]));
    const templateLabels = async (name: string) =>
      (
        JSON.parse(await kubectl(['get', 'deployment', name, '-n', CONTROLLER_NAMESPACE, '-o', 'json'])) as {
          spec: { template: { metadata: { labels: Record<string, string> } } };
        }
      ).spec.template.metadata.labels;
    const functionPods = await templateLabels('clone-function');
    const bridgePods = await templateLabels('image-cloner-deployment');
    const selects = (selector: { matchLabels?: Record<string, string> } | undefined, labels: Record<string, string>) =>
      Object.entries(selector?.matchLabels ?? {}).every(([key, value]) => labels[key] === value);

    const fn = policies['clone-function']!;
    expect(selects(fn.podSelector, functionPods) && !selects(fn.podSelector, bridgePods)).toBe(true);
    expect(fn.ingress!.flatMap((rule) => rule.from ?? []).every((peer) => selects(peer.podSelector, bridgePods))).toBe(true);
    const blocks = fn.egress!.flatMap((rule) => rule.to ?? []).flatMap((peer) => (peer.ipBlock ? [peer.ipBlock] : []));
    expect(blocks).toContainEqual({ cidr: '0.0.0.0/0', except: ['169.254.0.0/16'] });
    expect(blocks.find((block) => block.cidr === '::/0')?.except).toEqual(
      expect.arrayContaining(['fe80::/10', 'fd00:ec2::254/128']),
    );

    const bridge = policies['image-cloner']!;
    expect(selects(bridge.podSelector, bridgePods) && !selects(bridge.podSelector, functionPods)).toBe(true);
    const peers = bridge.ingress!.flatMap((rule) => rule.from ?? []);
    expect(peers.some((peer) => peer.podSelector && selects(peer.podSelector, functionPods))).toBe(true);
    expect(peers.some((peer) => peer.namespaceSelector?.matchLabels?.['image-clone-controller.io/monitoring'] === 'true')).toBe(
      true,
    );
  });

  it('uninstalls without leaving a workload stuck: finalizers released, pinned images restored, with copies held back', async () => {
    // A copy that will not finish before the uninstall, and a workload pinned long ago.
    const held = await seedImage('held-back');
    const namespace = await createNamespace('e2e-uninstall');
    const slow = slowDown('e2e/held-back', 60_000);
    await apply(manifest('Deployment', 'waiting', namespace, [held.reference]));
    await waitFor('the held-back copy to begin', () => (blobRequestsFor('e2e/held-back').length > 0 ? true : undefined));
    const pinnedBefore = (await get('Deployment', 'nginx', 'default'))!;
    const original = JSON.parse(pinnedBefore.metadata.annotations![ORIGINAL_IMAGES_ANNOTATION]!) as Record<string, string>;
    const kubeSystemWithFinalizer = (await get('Deployment', 'e2e-coredns', 'kube-system'))!;
    expect(holdsFinalizer(kubeSystemWithFinalizer)).toBe(true);

    for (const bridge of system.bridges) await bridge.stop();
    const result = await runScript('scripts/uninstall', ['--restore-images'], { KUBECONFIG: system.cluster.kubeconfigPath });
    expect(result.code, result.output).toBe(0);
    slow.remove();

    const waiting = (await get('Deployment', 'waiting', namespace))!;
    expect(holdsFinalizer(waiting)).toBe(false);
    expect(imagesOf(waiting)).toEqual([held.reference]);
    const restored = (await get('Deployment', 'nginx', 'default'))!;
    expect(imagesOf(restored)).toEqual([original.nginx]);
    expect(restored.metadata.annotations?.[ORIGINAL_IMAGES_ANNOTATION]).toBeUndefined();
    // Whoever put the finalizer in kube-system gets it released too.
    expect(holdsFinalizer((await get('Deployment', 'e2e-coredns', 'kube-system'))!)).toBe(false);
    // And the controller is gone.
    for (const [kind, name] of [
      ['deployment', 'clone-function'],
      ['configmap', 'image-cloner-config'],
      ['secret', 'image-cloner-secrets'],
    ]) {
      const lookup = await system.cluster.kubectl(['get', kind!, name!, '-n', CONTROLLER_NAMESPACE]);
      expect(lookup.stderr, `${kind} ${name}`).toContain('NotFound');
    }
    for (const [kind, name] of [
      ['clusterrole', 'image-cloner'],
      ['validatingadmissionpolicy', 'image-clone-controller-guardrails'],
    ]) {
      expect((await system.cluster.kubectl(['get', kind!, name!])).stderr).toContain('NotFound');
    }
  });
});
