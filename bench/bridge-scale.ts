// Scale benchmark of the bridge (issues 4, 12 and 13): a real kube-apiserver + etcd holding
// 10,000 Deployments (and, with --mixed, 2,000 StatefulSets, 2,000 CronJobs and 20,000 Pods
// without an owner) that carry the project's finalizer, a few pull secrets per namespace that
// many of them name (bench/bridge-workloads.ts), the bridge started as its own process (the
// bundle the container runs, its ServiceAccount's token from k8s/rbac, leader election on), and a
// stand-in clone function in this process. Measures
//   1. start → all workloads reconciled (finalizer gone and, for the kinds the bridge pins, images
//      pointed at backups, as the API server reports through watches of the benchmark's own, then
//      checked in a fresh list),
//   2. the bridge's peak RSS (VmHWM from /proc/<pid>/status),
//   3. under N changes per second (a pinned workload's image set to a new one): the delay from
//      the moment the change's API call returns to the function receiving a request for that image,
//   4. the bridge's reads of Secrets and ServiceAccounts (the API server's audit log), and that
//      each image was sent with the credentials its workload's pull secrets give.
// Goals: peak RSS < 200 MiB with Deployments alone (issues 4, 12), < 256 MiB (the pod's limit) in
// the mixed cluster (issue 13); p99 change → request < 1 s. Results and their reading: docs/scale.md.
//
//   npm run bench:bridge                             # 10,000 Deployments, 100 changes/s for 60 s
//   npm run bench:bridge -- --mixed                  # + 2,000 StatefulSets, 2,000 CronJobs, 20,000 Pods
//   npm run bench:bridge -- --source                 # bridge/main.ts as `npm run bridge` runs it
//   npm run bench:bridge -- --deployments 2000 --duration 20 --json /tmp/result.json
//
// Options: --deployments N (10000), --statefulsets N, --cronjobs N, --pods N (0; with --mixed 2000,
// 2000, 20000), --namespaces N (5), --no-pull-secrets (no workload names one), --rate changes/s
// (100), --duration s (60), --mode callback|synchronous (callback, the mode k8s/setup deploys),
// --workers N (the bridge's WORKERS; default: its own default), --memory-limit MiB (256, the pod's
// limit in k8s/setup/cloner-deployment.yml: the V8 heap Node derives from it; 0: this host's
// defaults), --source (run bridge/main.ts instead of the bundle the image runs), --entry FILE (run
// another build, e.g. a bundle), --bridge-env KEY=VALUE (repeatable), --node-arg FLAG (repeatable:
// a flag NODE_OPTIONS refuses, --node-arg=--trace-gc), --skip-calibration, --json FILE.

import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { KINDS } from '../bridge/workload.ts';
import { backupLocation } from '../functions/contract/index.ts';
import { formatReference, parseReference } from '../functions/contract/index.ts';
import { startKubeCluster, type KubeCluster } from '../testbed/kube-cluster.ts';
import { freePort } from '../testbed/ports.ts';
import { REPO_ROOT } from '../testbed/processes.ts';
import { mapLimit } from '../lib/semaphore.ts';
import { auditArgs, formatCounts, readCounts } from './bridge-audit.ts';
import { KubeApi } from './bridge-kube-api.ts';
import { buildBridge, cpuSecondsOf, findProcesses, spawnBridge, type BridgeProcess } from './bridge-process.ts';
import { backupOf, startStandIn, type StandIn } from './bridge-stand-in.ts';
import { imagesOf, isReconciled, ReconcileTracker, trackedKey } from './bridge-tracker.ts';
import {
  appImage,
  BENCH_KINDS,
  collectionPath,
  expectedUsername,
  firstImagePath,
  initialImages,
  makeTargets,
  manifestOf,
  objectPath,
  pullSecretObjects,
  pullSecretShares,
  type BenchKind,
  type Target,
} from './bridge-workloads.ts';

const MiB = 1024 * 1024;
const CONTROLLER_NAMESPACE = 'image-clone-controller';
const BRIDGE_USER = `system:serviceaccount:${CONTROLLER_NAMESPACE}:image-cloner`;
const backup = backupLocation('registry.example.com', 'backup');
const BACKUP_PREFIX = `${backup.registry}/${backup.namespace}/`;

const { values: args } = parseArgs({
  allowNegative: true,
  options: {
    deployments: { type: 'string' },
    statefulsets: { type: 'string' },
    cronjobs: { type: 'string' },
    pods: { type: 'string' },
    mixed: { type: 'boolean', default: false },
    'pull-secrets': { type: 'boolean', default: true },
    namespaces: { type: 'string', default: '5' },
    rate: { type: 'string', default: '100' },
    duration: { type: 'string', default: '60' },
    mode: { type: 'string', default: 'callback' },
    workers: { type: 'string' },
    'bridge-env': { type: 'string', multiple: true, default: [] },
    'node-arg': { type: 'string', multiple: true, default: [] },
    'create-concurrency': { type: 'string', default: '48' },
    'skip-calibration': { type: 'boolean', default: false },
    source: { type: 'boolean', default: false },
    entry: { type: 'string' },
    'memory-limit': { type: 'string', default: '256' },
    json: { type: 'string' },
  },
});
const positive = (name: string, value: string) => {
  const number = Number(value);
  if (!Number.isFinite(number) || number <= 0) throw new Error(`--${name} must be a positive number`);
  return number;
};
const count = (name: string, value: string) => {
  const number = Number(value);
  if (!Number.isInteger(number) || number < 0) throw new Error(`--${name} must be a whole number`);
  return number;
};
/** The mixed cluster of issue 13; a count given on the command line wins. */
const MIXED: Record<BenchKind, number> = { Deployment: 10_000, StatefulSet: 2_000, CronJob: 2_000, Pod: 20_000 };
const COUNTS: Record<BenchKind, number> = {
  Deployment: count('deployments', args.deployments ?? '10000'),
  StatefulSet: count('statefulsets', args.statefulsets ?? String(args.mixed ? MIXED.StatefulSet : 0)),
  CronJob: count('cronjobs', args.cronjobs ?? String(args.mixed ? MIXED.CronJob : 0)),
  Pod: count('pods', args.pods ?? String(args.mixed ? MIXED.Pod : 0)),
};
const PULL_SECRETS = args['pull-secrets'];
/** Issue 4 (and 12) set 200 MiB for Deployments alone; issue 13 the pod's limit for a mixed cluster. */
const DEPLOYMENTS_ONLY = BENCH_KINDS.every((kind) => kind === 'Deployment' || COUNTS[kind] === 0);
const RSS_GOAL_MIB = DEPLOYMENTS_ONLY ? 200 : 256;
const NAMESPACES = Math.floor(positive('namespaces', args.namespaces));
const RATE = positive('rate', args.rate);
const DURATION_S = positive('duration', args.duration);
const CREATE_CONCURRENCY = Math.floor(positive('create-concurrency', args['create-concurrency']));
if (args.mode !== 'callback' && args.mode !== 'synchronous') throw new Error('--mode must be callback or synchronous');
const MODE = args.mode;

/**
 * The V8 heap limits Node derives inside a container whose memory limit is `limitMiB` (it sizes the
 * heap from the cgroup limit, V8's Heap::HeapSizeFromPhysicalMemory): old generation half the
 * limit, semi-spaces of 1 MiB up to 512 MiB. Outside the pod this host's RAM (GiBs) would make
 * V8 size the young generation alone at 100+ MiB; the benchmark gives the bridge the pod's.
 * 0 keeps this host's defaults.
 */
function heapFlagsFor(limitMiB: number): string[] {
  if (limitMiB === 0) return [];
  const oldGeneration = Math.floor(limitMiB / 2);
  const semiSpace = Math.max(1, Math.floor(oldGeneration / 256));
  return [`--max-old-space-size=${oldGeneration}`, `--max-semi-space-size=${semiSpace}`];
}
const MEMORY_LIMIT_MIB = Number(args['memory-limit']);
if (!Number.isInteger(MEMORY_LIMIT_MIB) || MEMORY_LIMIT_MIB < 0) throw new Error('--memory-limit must be MiB (0: host defaults)');

/**
 * The process tuning the bridge's container gets in k8s/setup/cloner-deployment.yml (MALLOC_ARENA_MAX),
 * read from the manifest so that the benchmark measures what is deployed.
 */
function processTuningFromManifest(): Record<string, string> {
  const manifest = readFileSync(join(REPO_ROOT, 'k8s/setup/cloner-deployment.yml'), 'utf8');
  const bridge = manifest.slice(manifest.indexOf('- name: bridge'), manifest.indexOf('- name: function'));
  // Either quote style: prettier rewrote the manifest's "2" as '2' once, and the tuning was lost silently.
  const value = /- name: MALLOC_ARENA_MAX\s+value: ["']?(\d+)["']?/.exec(bridge)?.[1];
  if (value === undefined && bridge.includes('MALLOC_ARENA_MAX'))
    throw new Error('MALLOC_ARENA_MAX in the manifest does not parse');
  return value === undefined ? {} : { MALLOC_ARENA_MAX: value };
}

const log = (message: string) => process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${message}\n`);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const normalise = (image: string) => formatReference(parseReference(image));

// --- the workload -------------------------------------------------------------------------------

const targets = makeTargets(COUNTS, NAMESPACES);
const WORKLOADS = targets.length;
if (WORKLOADS === 0) throw new Error('no workloads: give --deployments, --statefulsets, --cronjobs or --pods');
const keyOf = (target: Target) => trackedKey(target.kind, target.namespace, target.name);
const kindsPresent = BENCH_KINDS.filter((kind) => COUNTS[kind] > 0);
const plural = (kind: BenchKind) => `${kind}s`;
const describeCounts = () => kindsPresent.map((kind) => `${COUNTS[kind]} ${plural(kind)}`).join(', ');

// --- statistics ---------------------------------------------------------------------------------

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

function summary(values: readonly number[]) {
  const sorted = [...values].sort((a, b) => a - b);
  return {
    count: sorted.length,
    p50: percentile(sorted, 50),
    p90: percentile(sorted, 90),
    p99: percentile(sorted, 99),
    max: sorted.at(-1) ?? Number.NaN,
  };
}

const ms = (value: number) => (Number.isNaN(value) ? 'n/a' : `${Math.round(value)} ms`);
const seconds = (value: number) => `${(value / 1000).toFixed(1)} s`;
const mib = (bytes: number) => `${(bytes / MiB).toFixed(0)} MiB`;

// --- CPU accounting -----------------------------------------------------------------------------

interface CpuSnapshot {
  readonly at: number;
  readonly seconds: Record<string, number>;
}

/** Busy CPU seconds of the whole machine (all cores), from /proc/stat. */
function machineBusySeconds(): number {
  const fields = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal: idle and iowait are not busy.
  const busy = fields.slice(0, 8).reduce((sum, value, index) => (index === 3 || index === 4 ? sum : sum + value), 0);
  return busy / 100;
}

/** Seconds during which some runnable task waited for a CPU (PSI), if the kernel reports it. */
function cpuStallSeconds(): number | undefined {
  try {
    const total = /^some .*total=(\d+)/m.exec(readFileSync('/proc/pressure/cpu', 'utf8'))?.[1];
    return total === undefined ? undefined : Number(total) / 1e6;
  } catch {
    return undefined;
  }
}

function cpuSnapshot(pids: Record<string, number[]>): CpuSnapshot {
  const snapshot: Record<string, number> = {};
  for (const [name, list] of Object.entries(pids)) {
    snapshot[name] = list.reduce((sum, pid) => sum + (cpuSecondsOf(pid) ?? 0), 0);
  }
  const own = process.cpuUsage();
  snapshot.benchmark = (own.user + own.system) / 1e6;
  snapshot.machine = machineBusySeconds();
  const stall = cpuStallSeconds();
  if (stall !== undefined) snapshot.stall = stall;
  return { at: performance.now(), seconds: snapshot };
}

/**
 * Average cores each process used between two snapshots; "others" is what the rest of the
 * machine used (other tenants of a shared machine), "stalled" the share of time some task was
 * waiting for a CPU.
 */
function coresBetween(from: CpuSnapshot, to: CpuSnapshot): Record<string, number> {
  const wall = (to.at - from.at) / 1000;
  const used = (name: string) => ((to.seconds[name] ?? 0) - (from.seconds[name] ?? 0)) / wall;
  const ours = ['kube-apiserver', 'etcd', 'bridge', 'benchmark'].filter((name) => name in to.seconds);
  const cores: Record<string, number> = Object.fromEntries(ours.map((name) => [name, used(name)]));
  cores.others = Math.max(0, used('machine') - ours.reduce((sum, name) => sum + used(name), 0));
  if ('stall' in to.seconds) cores.stalled = used('stall');
  return cores;
}

const formatCores = (cores: Record<string, number>) =>
  Object.entries(cores)
    .map(([name, value]) => (name === 'stalled' ? `CPU stall ${Math.round(value * 100)}%` : `${name} ${value.toFixed(2)}`))
    .join(', ');

// --- the run ------------------------------------------------------------------------------------

async function bridgeMetricsText(url: string): Promise<string> {
  return (await fetch(`${url}/metrics`)).text();
}

function metricValue(text: string, name: string, labels: Record<string, string> = {}): number {
  let total = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const match = /^([a-z_]+)(?:\{([^}]*)\})? (\S+)$/.exec(line);
    if (match === null || match[1] !== name) continue;
    const present = match[2] ?? '';
    if (Object.entries(labels).every(([label, value]) => present.includes(`${label}="${value}"`))) total += Number(match[3]);
  }
  return total;
}

async function waitForQueueIdle(url: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let quiet = 0;
  while (Date.now() < deadline) {
    const text = await bridgeMetricsText(url);
    const busy = metricValue(text, 'image_clone_bridge_queue_depth') + metricValue(text, 'image_clone_bridge_queue_processing');
    quiet = busy === 0 ? quiet + 1 : 0;
    if (quiet >= 3) return;
    await sleep(200);
  }
  log('the bridge queue did not go idle in time');
}

async function warningsIn(logPath: string): Promise<Map<string, number>> {
  const counts = new Map<string, number>();
  for (const line of (await readFile(logPath, 'utf8')).split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      const entry = JSON.parse(line) as { level?: number; msg?: string };
      if ((entry.level ?? 0) >= 40) counts.set(entry.msg ?? '?', (counts.get(entry.msg ?? '?') ?? 0) + 1);
    } catch {
      // a line cut short at exit
    }
  }
  return counts;
}

/**
 * What the API server alone does at RATE changes per second on this machine right now: the same
 * kind of change to throwaway Deployments (no finalizer, deleted afterwards), no bridge running,
 * the benchmark's watch the only watcher. Its latencies are the floor under the bridge's.
 */
async function calibrate(
  api: KubeApi,
): Promise<{ apiLatency: ReturnType<typeof summary>; watchDelay: ReturnType<typeof summary> }> {
  const namespace = 'bench-calibration';
  const count = Math.round(RATE * Math.min(DURATION_S, 10));
  await api.createNamespace(namespace);
  const objects: Target[] = Array.from({ length: count }, (_, index) => ({
    kind: 'Deployment',
    namespace,
    name: `calibration-${index}`,
    index,
  }));
  await mapLimit(objects, CREATE_CONCURRENCY, async (target) => {
    const manifest = manifestOf(target, false);
    const metadata = manifest.metadata as Record<string, unknown>;
    delete metadata.finalizers;
    await api.call('POST', collectionPath('Deployment', namespace), manifest);
  });
  const expected = new Map<string, string>();
  const seenAt = new Map<string, number>();
  const collection = collectionPath('Deployment', namespace);
  const watching = api.watch(
    collection,
    await api.resourceVersion(collection),
    (event) => {
      const object = event.object as { metadata?: { name?: string } };
      const name = object.metadata?.name ?? '';
      const image = expected.get(name);
      if (image !== undefined && imagesOf('Deployment', event.object).includes(image) && !seenAt.has(name)) {
        seenAt.set(name, performance.now());
      }
    },
    (error) => log(`calibration watch failed: ${error.message}`),
  );
  const returnedAt = new Map<string, { issued: number; returned: number }>();
  const started = performance.now();
  const calls: Promise<void>[] = [];
  for (const [index, target] of objects.entries()) {
    const wait = started + (index * 1000) / RATE - performance.now();
    if (wait > 1) await sleep(wait);
    const image = appImage(target, '2.0');
    expected.set(target.name, image);
    const issued = performance.now();
    calls.push(
      api
        .call(
          'PATCH',
          objectPath(target),
          [{ op: 'replace', path: firstImagePath('Deployment'), value: image }],
          'application/json-patch+json',
        )
        .then(() => void returnedAt.set(target.name, { issued, returned: performance.now() })),
    );
  }
  await Promise.all(calls);
  const deadline = performance.now() + 30_000;
  while (seenAt.size < count && performance.now() < deadline) await sleep(100);
  watching.stop();
  await api.call('DELETE', collection);
  const times = [...returnedAt.entries()];
  return {
    apiLatency: summary(times.map(([, time]) => time.returned - time.issued)),
    watchDelay: summary(times.flatMap(([name, time]) => (seenAt.has(name) ? [seenAt.get(name)! - time.returned] : []))),
  };
}

async function main(): Promise<void> {
  const workDir = await mkdtemp(join(tmpdir(), 'bridge-bench-'));
  const bridgeLog = join(workDir, 'bridge.log');
  let cluster: KubeCluster | undefined;
  let standIn: StandIn | undefined;
  let bridge: BridgeProcess | undefined;
  let api: KubeApi | undefined;
  const stopWatch: (() => void)[] = [];
  let progress: NodeJS.Timeout | undefined;
  try {
    log(`starting kube-apiserver and etcd`);
    const audit = await auditArgs(workDir, BRIDGE_USER);
    cluster = await startKubeCluster({ apiServerArgs: audit.args });
    const kubectl = async (kubectlArgs: string[]) => {
      const result = await cluster!.kubectl(kubectlArgs);
      if (result.code !== 0) throw new Error(`kubectl ${kubectlArgs.join(' ')}: ${result.stderr}`);
    };
    // The bridge's RBAC exactly as an operator applies it; the bridge runs with that token.
    await kubectl(['apply', '-f', `${REPO_ROOT}k8s/rbac`]);
    const serviceAccountKubeconfig = await cluster.serviceAccountKubeconfig(CONTROLLER_NAMESPACE, 'image-cloner');
    api = new KubeApi({ server: cluster.server, ca: await readFile(cluster.caFile), token: cluster.adminToken });

    // 1. Load the API server: namespaces, their pull secrets and ServiceAccounts, the workloads.
    let secretCount = 0;
    let accountCount = 0;
    for (let index = 0; index < NAMESPACES; index++) {
      const namespace = `bench-${index}`;
      await api.createNamespace(namespace);
      const { secrets, serviceAccounts } = pullSecretObjects(namespace, PULL_SECRETS);
      for (const secret of secrets) await api.call('POST', `/api/v1/namespaces/${namespace}/secrets`, secret);
      for (const account of serviceAccounts) await api.call('POST', `/api/v1/namespaces/${namespace}/serviceaccounts`, account);
      secretCount += secrets.length;
      accountCount += serviceAccounts.length;
    }
    const shares = pullSecretShares(targets, PULL_SECRETS);
    log(`creating ${describeCounts()} in ${NAMESPACES} namespaces (${secretCount} pull secrets)`);
    const createStarted = performance.now();
    await mapLimit(targets, CREATE_CONCURRENCY, async (target) => {
      await api!.call('POST', collectionPath(target.kind, target.namespace), manifestOf(target, PULL_SECRETS));
    });
    const createMs = performance.now() - createStarted;
    log(`created in ${seconds(createMs)} (${Math.round(WORKLOADS / (createMs / 1000))}/s)`);
    const objectBytes: Partial<Record<BenchKind, number>> = {};
    for (const kind of kindsPresent) {
      const first = targets.find((target) => target.kind === kind)!;
      objectBytes[kind] = Buffer.byteLength(JSON.stringify(await api.call('GET', objectPath(first))));
    }
    let calibration: Awaited<ReturnType<typeof calibrate>> | undefined;
    if (!args['skip-calibration']) {
      log(`calibrating: the API server alone at ${RATE} changes/s`);
      calibration = await calibrate(api);
      log(`  change API call p99 ${ms(calibration.apiLatency.p99)}, change → watch p99 ${ms(calibration.watchDelay.p99)}`);
    }

    // 2. Watch them (the benchmark's view of "reconciled"), start the function and the bridge.
    const tracker = new ReconcileTracker(targets.map(keyOf), BACKUP_PREFIX);
    let watchFailure: Error | undefined;
    for (const kind of kindsPresent) {
      const collection = collectionPath(kind);
      const watching = api.watch(
        collection,
        await api.resourceVersion(collection),
        (event) => tracker.onEvent(kind, event),
        (error) => {
          watchFailure = error;
          log(`benchmark watch of ${plural(kind)} failed: ${error.message}`);
        },
      );
      stopWatch.push(() => watching.stop());
    }

    const authToken = randomBytes(24).toString('hex');
    const callbackSecret = randomBytes(24).toString('hex');
    standIn = await startStandIn({ authToken, callbackSecret, backup });
    const port = await freePort();
    const bridgeUrl = `http://127.0.0.1:${port}`;
    const extraEnv = Object.fromEntries(
      (args['bridge-env'] ?? []).map((pair) => {
        const at = pair.indexOf('=');
        if (at <= 0) throw new Error(`--bridge-env ${pair}: expected KEY=VALUE`);
        return [pair.slice(0, at), pair.slice(at + 1)];
      }),
    );
    const bridgeEnv: Record<string, string> = {
      KUBECONFIG: serviceAccountKubeconfig,
      FUNCTION_URL: standIn.url,
      AUTH_TOKEN: authToken,
      CALLBACK_SECRET: callbackSecret,
      ...(MODE === 'callback' && { CALLBACK_URL: `${bridgeUrl}/callback` }),
      BACKUP_REGISTRY: backup.registry,
      BACKUP_NAMESPACE: backup.namespace,
      IGNORE_NAMESPACES: CONTROLLER_NAMESPACE,
      PORT: String(port),
      LEADER_ELECTION: 'true',
      POD_NAMESPACE: CONTROLLER_NAMESPACE,
      POD_NAME: 'bench-bridge',
      LOG_LEVEL: 'info',
      ...processTuningFromManifest(),
      ...(args.workers !== undefined && { WORKERS: args.workers }),
      ...extraEnv,
    };
    const nodeOptions = [...heapFlagsFor(MEMORY_LIMIT_MIB), bridgeEnv.NODE_OPTIONS ?? ''].join(' ').trim();
    if (nodeOptions !== '') bridgeEnv.NODE_OPTIONS = nodeOptions;
    const pids = {
      'kube-apiserver': findProcesses('kube-apiserver', cluster.dir),
      etcd: findProcesses('etcd', cluster.dir),
    };
    const initialSources = new Set(targets.flatMap(initialImages).map(normalise));
    // The credentials each source may be asked for with: those of the workloads that run it.
    const allowedUsers = new Map<string, Set<string>>();
    const allow = (target: Target, image: string) => {
      const source = normalise(image);
      const users = allowedUsers.get(source) ?? new Set<string>();
      allowedUsers.set(source, users.add(expectedUsername(target, image, PULL_SECRETS)));
    };
    for (const target of targets) for (const image of initialImages(target)) allow(target, image);
    await sleep(2_000); // let the API server settle after the load

    const entry = args.entry ?? (args.source ? 'bridge/main.ts' : await buildBridge());
    const entryName = args.entry ?? (args.source ? 'bridge/main.ts' : 'dist/bridge/main.js (the bundle the container runs)');
    log(`starting the bridge (node ${entryName}, ${MODE} mode)`);
    const cpuBefore = cpuSnapshot(pids);
    bridge = spawnBridge(bridgeEnv, bridgeLog, entry, args['node-arg']);
    const bridgePids = { ...pids, bridge: [bridge.pid] };
    const started = bridge.startedAt;
    void bridge.exited.then((code) => log(`the bridge exited (${code})`));

    // The V8 heap as the bridge reports it (its /metrics), to read the peak RSS against.
    const heapSamples: { at: number; total: number; used: number; external: number }[] = [];
    let sampling = true;
    const heapSampler = (async () => {
      while (sampling) {
        try {
          const text = await bridgeMetricsText(bridgeUrl);
          heapSamples.push({
            at: performance.now(),
            total: metricValue(text, 'image_clone_bridge_nodejs_heap_size_total_bytes'),
            used: metricValue(text, 'image_clone_bridge_nodejs_heap_size_used_bytes'),
            external: metricValue(text, 'image_clone_bridge_nodejs_external_memory_bytes'),
          });
        } catch {
          // not listening yet, or gone
        }
        await sleep(2_000);
      }
    })();
    stopWatch.push(() => (sampling = false));

    let readyAt: number | undefined;
    let rssAtReady = 0;
    const readiness = (async () => {
      for (;;) {
        try {
          if ((await fetch(`${bridgeUrl}/readyz`)).status === 200) {
            readyAt = performance.now();
            rssAtReady = bridge!.memory()?.rss ?? 0;
            return;
          }
        } catch {
          // not listening yet
        }
        await sleep(50);
      }
    })();
    progress = setInterval(() => {
      const left = kindsPresent
        .filter((kind) => tracker.pendingOf(kind) > 0)
        .map((kind) => `${plural(kind)} ${tracker.pendingOf(kind)}`);
      log(
        `  ${WORKLOADS - tracker.pending}/${WORKLOADS} reconciled (left: ${left.join(', ') || 'none'}; ${tracker.events} events seen), bridge RSS ${mib(bridge!.memory()?.rss ?? 0)}`,
      );
    }, 5_000);
    const startedWallClock = Date.now() - (performance.now() - started);
    await Promise.race([
      tracker.allReconciled(),
      bridge.exited.then(async (code) => {
        // The last lines but a native stack trace's (V8's reason for an abort comes before it).
        const lines = (await readFile(bridgeLog, 'utf8')).trimEnd().split('\n');
        const tail = lines
          .filter((line) => !/^\s*\d+: 0x[0-9a-f]+ /.test(line))
          .slice(-12)
          .join('\n');
        throw new Error(`the bridge exited (${code}) before all workloads were reconciled; its log ends:\n${tail}`);
      }),
    ]);
    clearInterval(progress);
    await readiness;
    const reconciledAt = tracker.lastReconciledAt!;
    const reconciledWallClock = Date.now() - (performance.now() - reconciledAt);
    const cpuInitial = coresBetween(cpuBefore, cpuSnapshot(bridgePids));
    const rssAtReconciled = bridge.memory()?.rss ?? 0;
    const initialAsked = [...initialSources].map((source) => standIn!.firstAsked.get(source) ?? Number.NaN);
    const firstRequestAt = Math.min(...initialAsked);
    const allRequestedAt = Math.max(...initialAsked);
    const initialStats = { ...standIn.stats };
    log(`all ${WORKLOADS} reconciled ${seconds(reconciledAt - started)} after start`);
    await waitForQueueIdle(bridgeUrl, 60_000);
    const initialMetrics = await bridgeMetricsText(bridgeUrl);

    // Check through a fresh list, not only the watch.
    let notReconciled = 0;
    for (const kind of kindsPresent) {
      for (const object of await api.list(collectionPath(kind))) {
        const namespace = (object.metadata as { namespace: string }).namespace;
        if (namespace.startsWith('bench-') && !isReconciled(kind, object, BACKUP_PREFIX)) notReconciled++;
      }
    }

    // 3. Changes at RATE per second, to the kinds the bridge pins (a Pod's image it never
    // rewrites), spread over them as they are many: one workload changed once.
    const total = Math.round(RATE * DURATION_S);
    const order = targets.filter((target) => KINDS[target.kind].pinnable);
    for (let index = order.length - 1; index > 0; index--) {
      const other = Math.floor(Math.random() * (index + 1));
      [order[index], order[other]] = [order[other]!, order[index]!];
    }
    if (total > order.length) throw new Error(`--rate × --duration (${total}) exceeds the number of pinned workloads`);
    interface Change {
      readonly key: string;
      readonly source: string;
      readonly issuedAt: number;
      returnedAt?: number;
      error?: string;
    }
    const changes: Change[] = [];
    const changedKinds = kindsPresent.filter((kind) => KINDS[kind].pinnable);
    log(`changing ${total} ${changedKinds.map(plural).join(', ')} at ${RATE}/s`);
    const changesWallClock = Date.now();
    const loopDelay = monitorEventLoopDelay({ resolution: 5 });
    loopDelay.enable();
    const cpuChangeStart = cpuSnapshot(bridgePids);
    const phaseStart = performance.now();
    const inFlight = new Set<Promise<void>>();
    for (let index = 0; index < total; index++) {
      const due = phaseStart + (index * 1000) / RATE;
      const wait = due - performance.now();
      if (wait > 1) await sleep(wait);
      const target = order[index]!;
      const image = appImage(target, `2.${index}`);
      const change: Change = { key: keyOf(target), source: normalise(image), issuedAt: performance.now() };
      changes.push(change);
      tracker.expect(change.key, image, backupOf(image, backup));
      allow(target, image);
      const call = api
        .call(
          'PATCH',
          objectPath(target),
          [{ op: 'replace', path: firstImagePath(target.kind), value: image }],
          'application/json-patch+json',
        )
        .then(
          () => {
            change.returnedAt = performance.now();
          },
          (error: unknown) => {
            change.error = (error as Error).message;
          },
        );
      inFlight.add(call);
      void call.finally(() => inFlight.delete(call));
    }
    await Promise.all([...inFlight]);
    const phaseEnd = performance.now();
    loopDelay.disable();
    log(`changes sent in ${seconds(phaseEnd - phaseStart)}; waiting for the bridge to catch up`);
    const drainDeadline = performance.now() + 60_000;
    while (
      performance.now() < drainDeadline &&
      (tracker.awaiting > 0 || changes.some((change) => !standIn!.firstAsked.has(change.source)))
    ) {
      await sleep(100);
    }
    const cpuChanges = coresBetween(cpuChangeStart, cpuSnapshot(bridgePids));
    await waitForQueueIdle(bridgeUrl, 30_000);
    const finalMetrics = await bridgeMetricsText(bridgeUrl);
    const memory = bridge.memory()!;
    sampling = false;
    await heapSampler;
    const peak = bridge.peakSample();
    const heapNearPeak =
      peak &&
      heapSamples.length > 0 &&
      heapSamples.reduce((best, sample) => (Math.abs(sample.at - peak.at) < Math.abs(best.at - peak.at) ? sample : best));
    const heapUsedMax = Math.max(0, ...heapSamples.map((sample) => sample.used));

    // What the bridge read of Secrets and ServiceAccounts (the API server's audit log), and
    // whether each image went with the credentials its workloads' pull secrets give.
    const reads = {
      initial: await readCounts(audit.logPath, startedWallClock, reconciledWallClock),
      changes: await readCounts(audit.logPath, changesWallClock),
      total: await readCounts(audit.logPath),
    };
    let wrongCredentials = 0;
    for (const [source, users] of standIn.askedWith) {
      const allowed = allowedUsers.get(source);
      for (const user of users) if (allowed === undefined || !allowed.has(user)) wrongCredentials++;
    }

    const applied = changes.filter((change) => change.returnedAt !== undefined);
    const toRequest = applied.flatMap((change) => {
      const asked = standIn!.firstAsked.get(change.source);
      return asked === undefined ? [] : [asked - change.returnedAt!];
    });
    const toPatched = applied.flatMap((change) => {
      const at = tracker.repatchedAt.get(change.key);
      return at === undefined ? [] : [at - change.returnedAt!];
    });
    const toWatched = applied.flatMap((change) => {
      const at = tracker.changeSeenAt.get(change.key);
      return at === undefined ? [] : [at - change.returnedAt!];
    });
    // The bridge's own share: from the moment a watch delivered the change to the request.
    const bridgeShare = applied.flatMap((change) => {
      const seen = tracker.changeSeenAt.get(change.key);
      const asked = standIn!.firstAsked.get(change.source);
      return seen === undefined || asked === undefined ? [] : [asked - seen];
    });
    const apiLatency = summary(applied.map((change) => change.returnedAt! - change.issuedAt));
    const watchDelay = summary(toWatched);
    const bridgeDelay = summary(bridgeShare);
    const requestDelay = summary(toRequest);
    // The same from the moment the change was sent: includes the API server's own time to
    // accept it, an upper bound where the figure above (from its answer) is a lower one.
    const requestDelayFromIssue = summary(
      applied.flatMap((change) => {
        const asked = standIn!.firstAsked.get(change.source);
        return asked === undefined ? [] : [asked - change.issuedAt];
      }),
    );
    const patchDelay = summary(toPatched);
    const rssDuringChanges = bridge.samples.filter((sample) => sample.at >= phaseStart && sample.at <= phaseEnd);

    const result = {
      machine: {
        cpus: cpus().length,
        cpu: cpus()[0]?.model,
        memoryGiB: Math.round(totalmem() / 1024 ** 3),
        node: process.version,
      },
      setup: {
        workloads: Object.fromEntries(kindsPresent.map((kind) => [kind, COUNTS[kind]])),
        namespaces: NAMESPACES,
        objectBytes,
        pullSecrets: { secrets: secretCount, serviceAccounts: accountCount, ...shares },
        distinctInitialImages: initialSources.size,
        mode: MODE,
        memoryLimitMiB: MEMORY_LIMIT_MIB,
        nodeOptions,
        entry: entryName,
        bridgeEnv: {
          WORKERS: bridgeEnv.WORKERS ?? '(default)',
          MALLOC_ARENA_MAX: bridgeEnv.MALLOC_ARENA_MAX ?? '(unset)',
          ...extraEnv,
        },
        createMs,
      },
      initial: {
        readyMs: readyAt! - started,
        firstRequestMs: firstRequestAt - started,
        allRequestedMs: allRequestedAt - started,
        reconciledMs: reconciledAt - started,
        kindReconciledMs: Object.fromEntries(kindsPresent.map((kind) => [kind, tracker.kindReconciledAt.get(kind)! - started])),
        notReconciledInList: notReconciled,
        rssAtReadyMiB: rssAtReady / MiB,
        rssAtReconciledMiB: rssAtReconciled / MiB,
        functionRequests: initialStats.requests,
        cores: cpuInitial,
        patches: metricValue(initialMetrics, 'image_clone_bridge_patches_total'),
        conflicts: metricValue(initialMetrics, 'image_clone_bridge_patches_total', { result: 'conflict' }),
        reconciles: metricValue(initialMetrics, 'image_clone_bridge_reconciles_total'),
      },
      changes: {
        planned: total,
        applied: applied.length,
        failed: changes.length - applied.length,
        failures: Object.fromEntries(
          [...new Set(changes.flatMap((change) => (change.error === undefined ? [] : [change.error.slice(0, 200)])))].map(
            (message) => [message, changes.filter((change) => change.error?.slice(0, 200) === message).length],
          ),
        ),
        rate: applied.length / ((phaseEnd - phaseStart) / 1000),
        apiLatency,
        watchDelay,
        bridgeDelay,
        requestDelay,
        requestDelayFromIssue,
        patchDelay,
        unmatched: applied.length - toRequest.length,
        notRepatched: applied.length - toPatched.length,
        benchmarkLoopDelayP99Ms: loopDelay.percentile(99) / 1e6,
        rssMaxMiB: Math.max(0, ...rssDuringChanges.map((sample) => sample.rss)) / MiB,
        cores: cpuChanges,
      },
      peakRssMiB: memory.hwm / MiB,
      atPeak: peak && {
        sinceStartMs: peak.at - started,
        anonMiB: peak.anon / MiB,
        fileMiB: peak.file / MiB,
        ...(heapNearPeak && {
          heapTotalMiB: heapNearPeak.total / MiB,
          heapUsedMiB: heapNearPeak.used / MiB,
          externalMiB: heapNearPeak.external / MiB,
        }),
      },
      heapUsedMaxMiB: heapUsedMax / MiB,
      rssGoalMiB: RSS_GOAL_MIB,
      reads,
      bridge: {
        functionRequests: standIn.stats.requests,
        imagesWithCredentials: standIn.stats.withCredentials,
        wrongCredentials,
        eventsDropped: metricValue(finalMetrics, 'image_clone_bridge_events_dropped_total'),
        repeatedImages: standIn.stats.repeated,
        callbackFailures: standIn.stats.callbackFailures,
        conflicts: metricValue(finalMetrics, 'image_clone_bridge_patches_total', { result: 'conflict' }),
        callbackRejections: metricValue(finalMetrics, 'image_clone_bridge_callback_rejections_total'),
        watchRestarts: metricValue(finalMetrics, 'image_clone_bridge_watch_restarts_total'),
        warnings: Object.fromEntries(await warningsIn(bridgeLog)),
      },
      calibration,
      benchmarkWatchFailed: watchFailure?.message,
    };

    const share = (part: number) => `${part} (${Math.round((100 * part) / WORKLOADS)}%)`;
    const rows: [string, string, string][] = [
      ['Workloads (namespaces)', `${describeCounts()} (${NAMESPACES})`, ''],
      ['Bytes each as served', kindsPresent.map((kind) => `${kind} ${objectBytes[kind]} B`).join(', '), ''],
      ['Distinct images at start', String(initialSources.size), ''],
      [
        'Pull secrets (Secrets / ServiceAccounts)',
        PULL_SECRETS
          ? `${secretCount} / ${accountCount} in ${NAMESPACES} namespaces`
          : `none (${accountCount} default ServiceAccounts)`,
        '',
      ],
      [
        'Workloads naming one / with one through their ServiceAccount / with credentials for an image',
        `${share(shares.namingOne)} / ${share(shares.throughServiceAccount)} / ${share(shares.withCredentials)}`,
        '',
      ],
      ['Bridge run as', `node ${entryName}, ${MODE} mode`, ''],
      ['MALLOC_ARENA_MAX (from the manifest)', bridgeEnv.MALLOC_ARENA_MAX ?? 'unset', ''],
      ['V8 heap', MEMORY_LIMIT_MIB === 0 ? "this host's defaults" : `as in a ${MEMORY_LIMIT_MIB} MiB pod: ${nodeOptions}`, ''],
      ['Start → ready (listed, watching, leader)', seconds(result.initial.readyMs), ''],
      ['Start → first function request', seconds(result.initial.firstRequestMs), ''],
      ['Start → every image requested', seconds(result.initial.allRequestedMs), ''],
      ['Start → all workloads reconciled', seconds(result.initial.reconciledMs), ''],
      ...(kindsPresent.length > 1
        ? ([
            [
              'Start → all of a kind reconciled',
              kindsPresent.map((kind) => `${plural(kind)} ${seconds(result.initial.kindReconciledMs[kind]!)}`).join(', '),
              '',
            ],
          ] as [string, string, string][])
        : []),
      ['Not reconciled in a fresh list afterwards', String(notReconciled), '0'],
      ['RSS when ready / when all reconciled', `${mib(rssAtReady)} / ${mib(rssAtReconciled)}`, ''],
      ['Peak RSS (VmHWM, whole run)', mib(memory.hwm), `< ${RSS_GOAL_MIB} MiB`],
      [
        'Highest RSS sampled: when; anonymous / file-backed; V8 heap total / used, external (/metrics, ≤ 2 s off)',
        peak === undefined
          ? 'n/a'
          : `${seconds(peak.at - started)} after start; ${mib(peak.anon)} / ${mib(peak.file)}` +
            (heapNearPeak ? `; ${mib(heapNearPeak.total)} / ${mib(heapNearPeak.used)}, ${mib(heapNearPeak.external)}` : ''),
        '',
      ],
      ['V8 heap used, highest sampled', mib(heapUsedMax), ''],
      ...(calibration === undefined
        ? []
        : ([
            [
              'Calibration, API server alone: change call p50 / p99',
              `${ms(calibration.apiLatency.p50)} / ${ms(calibration.apiLatency.p99)}`,
              '',
            ],
            [
              'Calibration, API server alone: change → watch p50 / p99',
              `${ms(calibration.watchDelay.p50)} / ${ms(calibration.watchDelay.p99)}`,
              '',
            ],
          ] as [string, string, string][])),
      [
        'Changes applied (rate achieved)',
        `${applied.length}/${total} (${result.changes.rate.toFixed(1)}/s) to ${changedKinds.map(plural).join(', ')}`,
        '',
      ],
      ['Change API call p50 / p99', `${ms(apiLatency.p50)} / ${ms(apiLatency.p99)}`, ''],
      ["Change → seen by the benchmark's own watch p50 / p99", `${ms(watchDelay.p50)} / ${ms(watchDelay.p99)}`, ''],
      ['Bridge share (watch → function request) p50 / p99', `${ms(bridgeDelay.p50)} / ${ms(bridgeDelay.p99)}`, ''],
      ['Change → function request p50', ms(requestDelay.p50), ''],
      ['Change → function request p90', ms(requestDelay.p90), ''],
      ['Change → function request p99', ms(requestDelay.p99), '< 1 s'],
      ['Change → function request max', ms(requestDelay.max), ''],
      [
        'Change sent (before the API server answered) → function request p50 / p99',
        `${ms(requestDelayFromIssue.p50)} / ${ms(requestDelayFromIssue.p99)}`,
        '',
      ],
      ['Changes never requested', String(result.changes.unmatched), '0'],
      ['Change → patched again p50 / p99', `${ms(patchDelay.p50)} / ${ms(patchDelay.p99)}`, ''],
      ['Max RSS during changes', `${result.changes.rssMaxMiB.toFixed(0)} MiB`, ''],
      ['Cores used, start → reconciled', formatCores(cpuInitial), ''],
      ['Cores used, changes', formatCores(cpuChanges), ''],
      ['Benchmark event-loop delay p99 (changes)', ms(result.changes.benchmarkLoopDelayP99Ms), ''],
      ['Bridge reads, start → reconciled (audit log)', formatCounts(reads.initial), ''],
      ['Bridge reads, changes and after (audit log)', formatCounts(reads.changes), ''],
      ['Bridge reads, whole run (audit log)', formatCounts(reads.total), ''],
      [
        'Images sent with credentials / with other credentials than their workloads give',
        `${standIn.stats.withCredentials} / ${wrongCredentials}`,
        '— / 0',
      ],
      ['Events dropped (bounded queue)', String(result.bridge.eventsDropped), ''],
      [
        'Patch conflicts / callback rejections / watch restarts',
        `${result.bridge.conflicts} / ${result.bridge.callbackRejections} / ${result.bridge.watchRestarts}`,
        '',
      ],
    ];
    const table = ['| Measure | Value | Goal |', '|---|---|---|', ...rows.map((row) => `| ${row.join(' | ')} |`)].join('\n');
    process.stdout.write(`\n${table}\n\n`);
    const refused = Object.entries(result.changes.failures);
    if (refused.length > 0) log(`changes refused: ${refused.map(([message, count]) => `${message} ×${count}`).join('; ')}`);
    const warnings = Object.entries(result.bridge.warnings);
    if (warnings.length > 0) log(`bridge warnings: ${warnings.map(([msg, count]) => `${msg} ×${count}`).join('; ')}`);
    if (args.json !== undefined) await writeFile(args.json, `${JSON.stringify(result, null, 2)}\n`);
    const missed =
      memory.hwm >= RSS_GOAL_MIB * MiB ||
      !(requestDelay.p99 < 1000) ||
      notReconciled > 0 ||
      result.changes.unmatched > 0 ||
      wrongCredentials > 0;
    if (missed) log('a goal was missed');
    process.exitCode = missed ? 1 : 0;
  } finally {
    clearInterval(progress);
    for (const stop of stopWatch) stop();
    await bridge?.stop();
    await standIn?.stop();
    await api?.close();
    await cluster?.stop();
    log(`bridge log: ${bridgeLog}`);
  }
}

await main();
