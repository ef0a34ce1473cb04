// The whole system on loopback, started the way an operator runs it, for the end-to-end tests and
// for `npm run demo`:
//
// - a real kube-apiserver (testbed/kube-cluster.ts) with the controller installed the way an
//   operator installs it: k8s/rbac, k8s/secrets and k8s/setup/cloner-deployment.yml applied by
//   kubectl (only the backup location and generated secrets substituted in the text), or the Helm
//   chart k8s/chart installed by helm (the backup location and credentials as values);
// - a source registry holding the example images (built by code, named like the real ones),
//   reached through a fault-injecting proxy so tests can slow a copy down;
// - a Docker-Hub-like backup registry: token auth, the flat layout;
// - the clone function (`node functions/node.ts`) and bridges (the bundle the container runs,
//   scripts/bundle-bridge.ts) started from what was installed, as a kubelet would start their
//   containers: the environment of their Deployment's container (env, envFrom, the Secrets and
//   ConfigMaps they name, the downward API), mounted Secrets written to files; each bridge gets a
//   Pod object of its own (its Deployment's template, as a ReplicaSet would create it) and the
//   ServiceAccount's own token, so the installed RBAC and admission guardrails are what is
//   exercised. Nothing in a Pod ever runs (there is no kubelet);
// - stand-ins for the two Services, which the installed configuration names by their cluster
//   DNS names (rewritten to the stand-ins' loopback addresses): the function's behind a fixed
//   address so it can go down and come back, and the bridge's, which sends callbacks to the
//   replicas its selector picks (the leader labels its own Pod) among the ready ones, as the
//   Service's endpoints would.
//
// No vitest here (nor anywhere in testbed/): scripts/demo.ts and bench/ import it too.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { createServer as createHttpServer, request as httpRequest, type IncomingHttpHeaders, type Server } from 'node:http';
import { createConnection, createServer as createTcpServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { backupLocation, backupReference, type BackupLocation } from '../functions/contract/index.ts';
import { bundleBridge } from '../scripts/bundle-bridge.ts';
import { formatReference, parseReference } from '../functions/contract/index.ts';
import { startNodeFunction, type CloneFunction } from './clone-function.ts';
import { startFaultProxy, type FaultProxy } from './fault-proxy.ts';
import { CHART_DIR, helmRunner, type Helm } from './helm.ts';
import {
  dockerManifestList,
  fetchManifest,
  ociIndexWithAttestations,
  pushImage,
  registrySession,
  sha256Digest,
  type RegistrySession,
  type TestImage,
} from './images.ts';
import { startKubeCluster, type KubeCluster } from './kube-cluster.ts';
import { podRuntime, type DiscoveredInstall } from './kubelet.ts';
import { closeServer, freePort, listenOnLoopback } from './ports.ts';
import { diesWithThisProcess, killOnExit, REPO_ROOT } from './processes.ts';
import { startRegistry, type Registry } from './registry.ts';
import { sleep, waitFor } from './wait.ts';

/** The controller's namespace and ServiceAccount, as k8s/ names them (the Helm install uses the namespace too). */
export const CONTROLLER_NAMESPACE = 'image-clone-controller';
export const SERVICE_ACCOUNT = 'image-cloner';
export const BACKUP_ACCOUNT = 'backupacct';
/** The label the leading bridge sets on its own Pod, which the bridge's Service selects. */
export const LEADER_LABEL = 'image-clone-controller.io/leader';

// --- example images -----------------------------------------------------------------------------

export interface ExampleImage {
  /** As k8s/setup writes it. */
  readonly original: string;
  /** Repository in the local source registry, the path the real image has. */
  readonly repository: string;
  readonly tag: string;
  readonly build: () => TestImage;
}

/** The images of the example workloads of k8s/setup (EXAMPLE_WORKLOAD_FILES), built by code. */
/** The example workloads the demo applies and the e2e test backs up. */
export const EXAMPLE_WORKLOAD_FILES = [
  'k8s/setup/app-deployment.yml',
  'k8s/setup/app-daemonset.yml',
  'k8s/setup/app-statefulset.yml',
  'k8s/setup/app-cronjob.yml',
] as const;

export const EXAMPLE_IMAGES: readonly ExampleImage[] = [
  { original: 'nginx:1.27', repository: 'library/nginx', tag: '1.27', build: () => dockerManifestList('example/nginx:1.27') },
  {
    original: 'busybox:1.36',
    repository: 'library/busybox',
    tag: '1.36',
    build: () => dockerManifestList('example/busybox:1.36'),
  },
  {
    original: 'quay.io/prometheus/node-exporter:v1.8.2',
    repository: 'prometheus/node-exporter',
    tag: 'v1.8.2',
    build: () => ociIndexWithAttestations('example/node-exporter:v1.8.2'),
  },
  { original: 'redis:7.4', repository: 'library/redis', tag: '7.4', build: () => dockerManifestList('example/redis:7.4') },
  {
    original: 'alpine:3.20',
    repository: 'library/alpine',
    tag: '3.20',
    build: () => ociIndexWithAttestations('example/alpine:3.20'),
  },
];

/**
 * Points every `image:` of a manifest at `host`, keeping repository path, tag and digest:
 * `nginx:1.27` → `HOST/library/nginx:1.27`, `quay.io/prometheus/x:1` → `HOST/prometheus/x:1`.
 */
export function rewriteImageHosts(manifest: string, host: string): string {
  return manifest.replace(
    /^(\s*(?:-\s+)?image:\s*)(["']?)([^\s"'#]+)\2/gm,
    (_line, prefix: string, quote: string, image: string) => {
      const reference = parseReference(image);
      const rewritten = formatReference({ ...reference, registry: host });
      return `${prefix}${quote}${rewritten}${quote}`;
    },
  );
}

// --- processes ----------------------------------------------------------------------------------

/** One pino line of a bridge, with the name of the bridge process that wrote it. */
export interface LogLine {
  readonly bridge: string;
  readonly level: number;
  readonly time: number;
  readonly msg: string;
  readonly [field: string]: unknown;
}

export interface BridgeProcess {
  /** Its POD_NAME: the identity it holds the lease under. */
  readonly name: string;
  readonly pid: number;
  readonly port: number;
  readonly url: string;
  readonly mode: 'callback' | 'synchronous';
  /** Every JSON line it printed so far. */
  readonly logs: LogLine[];
  /** Raw stdout and stderr. */
  output(): string;
  readonly running: boolean;
  /** When it was killed (SIGKILL), if it was. */
  readonly killedAt: number | undefined;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** GET /readyz answered 200: every replica is, a leader once its informers have synced. */
  ready(): Promise<boolean>;
  /**
   * The bridge's Service would send it callbacks: it is ready and its Pod matches the Service's
   * selector (it leads: the leader label is on its Pod).
   */
  serving(): Promise<boolean>;
  metrics(): Promise<string>;
  /** SIGTERM (a pod being replaced): the bridge releases its lease and exits. */
  stop(): Promise<void>;
  /** SIGKILL (a crash): the lease stays held until it expires. */
  kill(): Promise<void>;
}

async function startBridgeProcess(
  name: string,
  entry: string,
  env: Record<string, string>,
  onLine: (line: LogLine) => void,
  pod: { selected: () => Promise<boolean>; deleted: () => Promise<void> },
): Promise<BridgeProcess> {
  const port = Number(env.PORT);
  const child = spawn(...diesWithThisProcess(process.execPath, [entry]), {
    cwd: REPO_ROOT,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  killOnExit(child);
  const logs: LogLine[] = [];
  let raw = '';
  let partial = '';
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
    raw = (raw + chunk).slice(-4_000_000);
    partial += chunk;
    let newline: number;
    while ((newline = partial.indexOf('\n')) !== -1) {
      const text = partial.slice(0, newline);
      partial = partial.slice(newline + 1);
      try {
        const line = { ...(JSON.parse(text) as object), bridge: name } as LogLine;
        logs.push(line);
        onLine(line);
      } catch {
        // Not a log line (a crash trace goes to stderr, but be lenient).
      }
    }
  });
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (raw = (raw + chunk).slice(-4_000_000)));
  let running = true;
  let killedAt: number | undefined;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => {
      running = false;
      resolve({ code, signal });
    }),
  );
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 30_000;
  while (!logs.some((line) => line.msg === 'bridge listening')) {
    if (!running) throw new Error(`bridge ${name} exited during startup:\n${raw.slice(-4000)}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`bridge ${name} did not start listening in 30 s:\n${raw.slice(-4000)}`);
    }
    await sleep(50);
  }
  const signal = async (which: NodeJS.Signals) => {
    if (!running) return;
    child.kill(which);
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    await exited;
    clearTimeout(timer);
  };
  const ready = async () => {
    if (!running) return false;
    try {
      const response = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(2_000) });
      await response.arrayBuffer();
      return response.status === 200;
    } catch {
      return false;
    }
  };
  return {
    name,
    pid: child.pid!,
    port,
    url,
    mode: env.CALLBACK_URL ? 'callback' : 'synchronous',
    logs,
    output: () => raw,
    get running() {
      return running;
    },
    get killedAt() {
      return killedAt;
    },
    exited,
    ready,
    serving: async () => (await ready()) && (await pod.selected()),
    metrics: async () => (await fetch(`${url}/metrics`)).text(),
    // A pod being replaced: the bridge steps down and exits, then the Pod object goes.
    stop: async () => {
      await signal('SIGTERM');
      await pod.deleted();
    },
    kill: async () => {
      if (running) killedAt = Date.now();
      await signal('SIGKILL');
    },
  };
}

// --- stand-ins for the two Services -------------------------------------------------------------

/** A fixed TCP address forwarding to whatever is behind it now; nothing behind it: connection reset. */
export interface TcpService {
  readonly url: string;
  setTarget(port: number | undefined): void;
  stop(): Promise<void>;
}

export async function startTcpService(): Promise<TcpService> {
  let target: number | undefined;
  const sockets = new Set<Socket>();
  const server = createTcpServer((client) => {
    sockets.add(client);
    client.once('close', () => sockets.delete(client));
    if (target === undefined) {
      client.destroy();
      return;
    }
    const upstream = createConnection({ host: '127.0.0.1', port: target });
    sockets.add(upstream);
    upstream.once('close', () => sockets.delete(upstream));
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    client.pipe(upstream).pipe(client);
  });
  return {
    url: `http://127.0.0.1:${await listenOnLoopback(server)}`,
    setTarget(port) {
      target = port;
    },
    async stop() {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** A callback as it reached the bridge's Service: what a captured request would hold. */
export interface RecordedCallback {
  readonly at: number;
  readonly headers: Readonly<Record<string, string>>;
  readonly body: string;
  /** The status the bridge answered; 503 when no replica was ready. */
  status: number | undefined;
}

/** The bridge's Service: requests go to a ready replica whose Pod its selector picks (the leader's). */
export interface BridgeService {
  readonly url: string;
  readonly callbacks: RecordedCallback[];
  stop(): Promise<void>;
}

async function startBridgeService(backends: () => readonly BridgeProcess[]): Promise<BridgeService> {
  const callbacks: RecordedCallback[] = [];
  const pick = async (): Promise<BridgeProcess | undefined> => {
    for (const bridge of backends()) if (bridge.running && (await bridge.serving())) return bridge;
    return undefined;
  };
  const server: Server = createHttpServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks);
    let record: RecordedCallback | undefined;
    if (req.method === 'POST' && req.url?.startsWith('/callback')) {
      record = { at: Date.now(), headers: pickHeaders(req.headers), body: body.toString('utf8'), status: undefined };
      callbacks.push(record);
    }
    const backend = await pick();
    if (backend === undefined) {
      if (record) record.status = 503;
      res.writeHead(503, { 'content-type': 'application/json' }).end('{"error":"no ready endpoint"}');
      return;
    }
    const upstream = httpRequest({
      host: '127.0.0.1',
      port: backend.port,
      method: req.method,
      path: req.url,
      headers: { ...req.headers, 'content-length': String(body.length), connection: 'close' },
    });
    upstream.on('error', () => {
      if (record) record.status = 502;
      if (!res.headersSent) res.writeHead(502).end();
      else res.destroy();
    });
    upstream.on('response', (answer) => {
      if (record) record.status = answer.statusCode;
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
    });
    upstream.end(body);
  });
  return {
    url: `http://127.0.0.1:${await listenOnLoopback(server)}`,
    callbacks,
    stop: () => closeServer(server),
  };
}

function pickHeaders(headers: IncomingHttpHeaders): Record<string, string> {
  const picked: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (typeof value === 'string' && (name.startsWith('x-clone-') || name === 'content-type')) picked[name] = value;
  }
  return picked;
}

// --- workloads, as kubectl shows them -----------------------------------------------------------

export interface Container {
  readonly name: string;
  readonly image: string;
}

/** A workload of any kind as `kubectl get -o json` shows it: the fields the harness's users read. */
export interface Workload {
  readonly kind: string;
  readonly metadata: {
    readonly name: string;
    readonly namespace: string;
    readonly uid: string;
    readonly resourceVersion: string;
    readonly finalizers?: readonly string[];
    readonly deletionTimestamp?: string;
    readonly annotations?: Readonly<Record<string, string>>;
  };
  readonly spec: Readonly<Record<string, unknown>>;
}

export interface PodSpec {
  readonly containers: readonly Container[];
  readonly initContainers?: readonly Container[];
  readonly ephemeralContainers?: readonly Container[];
}

/** The pod spec of any kind: a CronJob's is under jobTemplate, a Pod's is its spec. */
export function podSpecOf(workload: Workload): PodSpec {
  const spec = workload.spec as { template?: { spec: PodSpec }; jobTemplate?: { spec: { template: { spec: PodSpec } } } };
  return spec.jobTemplate?.spec.template.spec ?? spec.template?.spec ?? (workload.spec as unknown as PodSpec);
}

/** Every container of the pod spec, init containers first (as a pod starts them). */
export function containersOf(workload: Workload): Container[] {
  const podSpec = podSpecOf(workload);
  return [...(podSpec.initContainers ?? []), ...podSpec.containers];
}

// --- the system ---------------------------------------------------------------------------------

export interface SystemOptions {
  /** Folder holding kube-apiserver and etcd (default: $KUBE_BINARIES_DIR or scripts/kube-binaries). */
  readonly binDir?: string;
  /** Progress messages. */
  readonly log?: (message: string) => void;
  /**
   * Whether workloads reach the source registry through the fault proxy (default true: tests
   * slow copies down with it). False names the registry's own address.
   */
  readonly sourceThroughProxy?: boolean;
  /** Aborting stops whatever has started so far; a start in progress then rejects. */
  readonly signal?: AbortSignal;
  /** How the controller is installed (default: with kubectl, as README's plain path does). */
  readonly install?: Installation;
}

/** README's two install paths the harness can take. */
export type Installation =
  | { readonly with: 'kubectl' }
  | {
      readonly with: 'helm';
      /** Default image-clone-controller. */
      readonly release?: string;
      /** Values over those the harness sets (the backup location and its credentials). */
      readonly values?: Readonly<Record<string, unknown>>;
    };

/** What was installed, as the harness found it in the cluster. */
export type Installed = DiscoveredInstall;

export interface StartBridgeOptions {
  /** false: no CALLBACK_URL, the bridge calls the function synchronously (a function on a FaaS). */
  readonly callback?: boolean;
}

export interface System {
  readonly cluster: KubeCluster;
  /** Seed through `source.url`; workloads name images on `sourceHost`. */
  readonly source: Registry;
  readonly sourceProxy: FaultProxy;
  /** The source registry's host in image references: the proxy's, unless sourceThroughProxy is false. */
  readonly sourceHost: string;
  /** A registry behind htpasswd: the function holds no credentials for it, workloads' pull secrets do. */
  readonly privateSource: Registry;
  readonly backup: Registry;
  readonly backupSession: RegistrySession;
  readonly backupLocation: BackupLocation;
  /** AUTH_TOKEN and CALLBACK_SECRET as generated and installed (k8s/secrets, or the chart's Secret). */
  readonly secrets: { readonly authToken: string; readonly callbackSecret: string };
  readonly installed: Installed;
  /** helm against this cluster (its own state folder); throws with helm's message on failure. */
  helm(args: readonly string[]): Promise<string>;
  readonly bridgeService: BridgeService;
  /** Every bridge started, in order (stopped ones included). */
  readonly bridges: readonly BridgeProcess[];
  /** Every log line of every bridge, in arrival order. */
  readonly logs: readonly LogLine[];
  cloneFunction(): CloneFunction | undefined;
  /** Starts the function (again) behind its fixed address. */
  startFunction(): Promise<CloneFunction>;
  /** Takes the function away: connections to its address are reset until startFunction(). */
  stopFunction(): Promise<void>;
  /**
   * Starts a bridge replica as its Deployment describes it now (after an upgrade, the new
   * configuration), in a Pod named `name`; stop() deletes the Pod again, kill() leaves it.
   */
  startBridge(name: string, options?: StartBridgeOptions): Promise<BridgeProcess>;
  /** kubectl as the cluster admin; throws with kubectl's message on failure. */
  kubectl(args: readonly string[], input?: string): Promise<string>;
  /** `kubectl get` of one workload; undefined when there is none (any other failure throws). */
  workload(kind: string, name: string, namespace: string): Promise<Workload | undefined>;
  /** The example workloads of k8s/setup with their images pointed at the source registry. */
  exampleWorkloads(): Promise<string>;
  /** Pushes an image to the source registry; returns its reference as workloads write it. */
  seed(repository: string, tag: string, image: TestImage): Promise<string>;
  /** `backup/name:tag@digest`, where the bridge must point `image` (digest: the source's). */
  backupOf(image: string, digest: string): string;
  /** Reads the backup of `image` back: every manifest by digest, byte for byte, and the tag. */
  verifyBackup(image: string, expected: TestImage): Promise<{ repository: string; tag: string; digest: string }>;
  /** Whether the backup registry holds a manifest for this source image's tag. */
  hasBackup(image: string): Promise<boolean>;
  /** Writes every process's output to `dir` (bridge-<name>.log, clone-function.log), for debugging. */
  writeLogs(dir: string): Promise<void>;
  /** The last lines of each bridge's and the clone function's output: what a failed test prints. */
  recentOutput(): string;
  stop(): Promise<void>;
}

export async function startSystem(options: SystemOptions = {}): Promise<System> {
  const log = options.log ?? (() => {});
  const stops: (() => Promise<unknown>)[] = [];
  const bridges: BridgeProcess[] = [];
  const logs: LogLine[] = [];
  let fn: CloneFunction | undefined;
  /** Output of function processes already stopped. */
  let functionOutput = '';
  let stopped = false;

  let stopping: Promise<void> | undefined;
  /** Stops everything started so far; every call gets the same promise. */
  const stop = (): Promise<void> => {
    stopped = true;
    stopping ??= (async () => {
      for (const bridge of [...bridges].reverse()) await bridge.stop().catch(() => {});
      await fn?.stop().catch(() => {});
      for (const step of stops.splice(0).reverse()) await step().catch(() => {});
    })();
    return stopping;
  };
  /** Hands what was just started to stop(); when stop() ran meanwhile (an abort), stops it at once. */
  const own = async <T>(started: T, stopIt: (value: T) => Promise<unknown>): Promise<T> => {
    if (stopped) {
      await stopIt(started).catch(() => {});
      throw new Error('stopped while starting');
    }
    stops.push(() => stopIt(started));
    return started;
  };
  if (options.signal?.aborted) throw new Error('aborted');
  options.signal?.addEventListener('abort', () => void stop(), { once: true });

  try {
    log('starting etcd and kube-apiserver');
    const cluster = await own(await startKubeCluster(options.binDir === undefined ? {} : { binDir: options.binDir }), (c) =>
      c.stop(),
    );
    const kubectl = async (args: readonly string[], input?: string): Promise<string> => {
      const result = await cluster.kubectl(args, input === undefined ? {} : { input });
      if (result.code !== 0) throw new Error(`kubectl ${args.join(' ')} failed: ${result.stderr.trim()}`);
      return result.stdout;
    };

    log('starting the source registry and the backup registry (token auth, like Docker Hub)');
    const source = await own(await startRegistry({ auth: 'none' }), (r) => r.stop());
    const backup = await own(await startRegistry({ auth: 'token' }), (r) => r.stop());
    // A private registry too (htpasswd): only a workload's own pull secret gets its images copied.
    const privateSource = await own(await startRegistry({ auth: 'htpasswd' }), (r) => r.stop());
    const sourceProxy = await own(await startFaultProxy(source.url), (p) => p.stop());
    const sourceHost = options.sourceThroughProxy === false ? source.host : sourceProxy.host;
    const backupSession = registrySession(backup.url, { credentials: backup.credentials! });
    const location = backupLocation(backup.host, BACKUP_ACCOUNT, { layout: 'flat' });

    log(`seeding the source registry ${sourceHost} with the example images`);
    for (const example of EXAMPLE_IMAGES) {
      await pushImage(source.url, example.repository, example.build(), { tag: example.tag });
    }

    const credentials = backup.credentials!;
    const install = options.install ?? { with: 'kubectl' };
    let helm: Helm | undefined;
    const runHelm = async (args: readonly string[]): Promise<string> => {
      helm ??= await helmRunner(join(cluster.dir, 'helm'));
      const result = await helm(args, { kubeconfig: cluster.kubeconfigPath });
      if (result.code !== 0) throw new Error(`helm ${args.join(' ')} failed: ${result.stderr.trim()}`);
      return result.stdout;
    };
    let release: string | undefined;
    if (install.with === 'kubectl') {
      // The manifests as an operator applies them; only the backup location and secrets filled in.
      log('applying k8s/rbac, k8s/secrets and k8s/setup/cloner-deployment.yml');
      await kubectl(['apply', '-f', join(REPO_ROOT, 'k8s/rbac')]);
      await kubectl(
        ['apply', '-f', '-'],
        await substitute('k8s/secrets/image-cloner-secrets.yml', [
          [/^(\s*AUTH_TOKEN:\s*).*$/m, JSON.stringify(randomBytes(32).toString('hex'))],
          [/^(\s*CALLBACK_SECRET:\s*).*$/m, JSON.stringify(randomBytes(32).toString('hex'))],
        ]),
      );
      await kubectl(
        ['apply', '-f', '-'],
        await substitute('k8s/secrets/docker-cred-secret.yml', [
          [/^(\s*)"https:\/\/index\.docker\.io\/v1\/"(?=:)/m, JSON.stringify(backup.host)],
          [/<BACKUP_REGISTRY_USERNAME>/, JSON.stringify(credentials.username).slice(1, -1)],
          [/<BACKUP_REGISTRY_PASSWORD_OR_ACCESS_TOKEN>/, JSON.stringify(credentials.password).slice(1, -1)],
        ]),
      );
      const configValue = (key: string, value: string): [RegExp, string] => [
        new RegExp(`^(\\s*${key}:\\s*).*$`, 'm'),
        JSON.stringify(value),
      ];
      const clonerYaml = await substitute('k8s/setup/cloner-deployment.yml', [
        configValue('BACKUP_REGISTRY', backup.host),
        configValue('BACKUP_NAMESPACE', BACKUP_ACCOUNT),
        // A registry on an address would get the nested layout; this one stands in for Docker Hub.
        configValue('BACKUP_LAYOUT', 'flat'),
      ]);
      await kubectl(['apply', '-f', '-'], clonerYaml);
    } else {
      release = install.release ?? 'image-clone-controller';
      log(`installing the Helm chart k8s/chart as release ${release}`);
      const values = mergeValues(
        {
          backup: { registry: backup.host, namespace: BACKUP_ACCOUNT, layout: 'flat' },
          registryCredentials: { server: backup.host, username: credentials.username, password: credentials.password },
        },
        install.values ?? {},
      );
      const valuesFile = join(cluster.dir, 'helm-values.json');
      await writeFile(valuesFile, JSON.stringify(values), { mode: 0o600 });
      await runHelm(['install', release, CHART_DIR, '--namespace', CONTROLLER_NAMESPACE, '--create-namespace', '-f', valuesFile]);
    }

    // What a kubelet would do with the installed objects: no Pod ever runs, so the harness starts
    // the processes their containers would run, with the same environment.
    const kubelet = await own(await podRuntime(cluster, CONTROLLER_NAMESPACE), (runtime) => runtime.close());
    const installed = await kubelet.discover(install.with, release);
    log(`installed: bridge ${installed.bridgeDeployment}, function ${installed.functionDeployment ?? '(outside)'}`);

    const functionService = await own(await startTcpService(), (service) => service.stop());
    const bridgeServiceSelector = await kubelet.serviceSelector(installed.bridgeService);
    const bridgeService = await own(await startBridgeService(() => bridges), (service) => service.stop());
    // The Services' cluster names, as the installed configuration writes them, lead to the stand-ins.
    const services = new Map([
      [installed.functionService, functionService.url],
      [installed.bridgeService, bridgeService.url],
    ]);
    // The bridge as the container runs it: one bundled file.
    const bridgeEntry = await bundleBridge(join(cluster.dir, 'bridge.mjs'));
    const serviceAccountKubeconfig = await cluster.serviceAccountKubeconfig(CONTROLLER_NAMESPACE, installed.serviceAccount);
    const sharedSecrets = await kubelet.containerEnv(installed.bridgeDeployment, 'shared-secrets-probe', services);

    const startFunction = async () => {
      if (fn !== undefined) throw new Error('the clone function is running already');
      if (installed.functionDeployment === undefined) throw new Error('no clone function is installed in the cluster');
      log('starting the clone function (node functions/node.ts)');
      const env = await kubelet.containerEnv(installed.functionDeployment, 'clone-function', services);
      const started = await startNodeFunction({
        ...env,
        // Loopback registries speak plain HTTP.
        INSECURE_REGISTRIES: `${sourceProxy.host},${source.host},${privateSource.host},${backup.host}`,
      });
      if (stopped) {
        await started.stop();
        throw new Error('stopped while starting');
      }
      fn = started;
      functionService.setTarget(Number(new URL(started.url).port));
      return started;
    };
    const stopFunction = async () => {
      functionService.setTarget(undefined);
      const running = fn;
      fn = undefined;
      await running?.stop();
      functionOutput += running?.logs() ?? '';
    };
    if (installed.functionDeployment !== undefined) await startFunction();

    const startBridge = async (name: string, bridgeOptions: StartBridgeOptions = {}) => {
      const port = await freePort();
      await kubelet.createPod(installed.bridgeDeployment, name);
      const env: Record<string, string> = {
        ...(await kubelet.containerEnv(installed.bridgeDeployment, name, services)),
        ...(bridgeOptions.callback === false && { CALLBACK_URL: '' }),
        PORT: String(port),
        // Outside a pod: the ServiceAccount's token in a kubeconfig, and leader election asked for
        // explicitly (it is on by default only in-cluster).
        KUBECONFIG: serviceAccountKubeconfig,
        LEADER_ELECTION: 'true',
      };
      log(`starting bridge ${name} (its bundle, ${env.CALLBACK_URL ? 'callback' : 'synchronous'} mode)`);
      const bridge = await startBridgeProcess(name, bridgeEntry, env, (line) => logs.push(line), {
        selected: () => kubelet.podSelected(name, bridgeServiceSelector),
        deleted: () => kubelet.deletePod(name),
      });
      bridges.push(bridge);
      if (stopped) {
        await bridge.stop();
        throw new Error('stopped while starting');
      }
      return bridge;
    };

    const backupTarget = (image: string) => backupReference(parseReference(image), location);
    return {
      cluster,
      source,
      sourceProxy,
      sourceHost,
      privateSource,
      backup,
      backupSession,
      backupLocation: location,
      secrets: { authToken: sharedSecrets.AUTH_TOKEN!, callbackSecret: sharedSecrets.CALLBACK_SECRET! },
      installed,
      helm: runHelm,
      bridgeService,
      bridges,
      logs,
      cloneFunction: () => fn,
      startFunction,
      stopFunction,
      startBridge,
      kubectl,
      workload: async (kind, name, namespace) => {
        const result = await cluster.kubectl(['get', kind.toLowerCase(), name, '-n', namespace, '-o', 'json']);
        if (result.code === 0) return JSON.parse(result.stdout) as Workload;
        if (result.stderr.includes('NotFound')) return undefined;
        throw new Error(`kubectl get ${kind} ${namespace}/${name} failed: ${result.stderr.trim()}`);
      },
      exampleWorkloads: async () => {
        const texts = await Promise.all(EXAMPLE_WORKLOAD_FILES.map((file) => readFile(join(REPO_ROOT, file), 'utf8')));
        return texts.map((text) => rewriteImageHosts(text, sourceHost)).join('\n---\n');
      },
      seed: async (repository, tag, image) => {
        await pushImage(source.url, repository, image, { tag });
        return `${sourceHost}/${repository}:${tag}`;
      },
      backupOf: (image, digest) => `${formatReference(backupTarget(image))}@${digest}`,
      verifyBackup: async (image, expected) => {
        const target = backupTarget(image);
        for (const manifest of expected.manifests) {
          const fetched = await fetchManifest(backupSession, target.repository, manifest.digest);
          if (fetched.status !== 200) throw new Error(`${target.repository}@${manifest.digest}: HTTP ${fetched.status}`);
          if (sha256Digest(fetched.bytes) !== manifest.digest)
            throw new Error(`${target.repository}@${manifest.digest}: the backup serves other bytes`);
        }
        const tagged = await fetchManifest(backupSession, target.repository, target.tag!);
        if (tagged.status !== 200) throw new Error(`${target.repository}:${target.tag}: HTTP ${tagged.status}`);
        const digest = sha256Digest(tagged.bytes);
        if (digest !== expected.root.digest)
          throw new Error(`${target.repository}:${target.tag} is ${digest}, expected ${expected.root.digest}`);
        return { repository: target.repository, tag: target.tag!, digest };
      },
      hasBackup: async (image) => {
        const target = backupTarget(image);
        const fetched = await fetchManifest(backupSession, target.repository, target.tag!);
        return fetched.status === 200;
      },
      writeLogs: async (dir) => {
        await mkdir(dir, { recursive: true });
        for (const bridge of bridges) await writeFile(join(dir, `bridge-${bridge.name}.log`), bridge.output());
        await writeFile(join(dir, 'clone-function.log'), functionOutput + (fn?.logs() ?? ''));
        await writeFile(join(dir, 'kube-apiserver.log'), await readFile(cluster.logs.apiServer, 'utf8').catch(() => ''));
      },
      recentOutput: () => {
        const last = (text: string, lines: number) => text.split('\n').slice(-lines).join('\n');
        return [
          ...bridges.map((bridge) => `--- bridge ${bridge.name} (last lines) ---\n${last(bridge.output(), 60)}`),
          `--- clone function (last lines) ---\n${last(fn?.logs() ?? '', 40)}`,
        ].join('\n');
      },
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}

// --- small helpers ------------------------------------------------------------------------------

/** Helm's way with values: maps merge key by key, anything else in `over` replaces what `base` has. */
export function mergeValues(
  base: Readonly<Record<string, unknown>>,
  over: Readonly<Record<string, unknown>>,
): Record<string, unknown> {
  const merged: Record<string, unknown> = { ...base };
  for (const [key, value] of Object.entries(over)) {
    const before = merged[key];
    const isMap = (candidate: unknown): candidate is Record<string, unknown> =>
      typeof candidate === 'object' && candidate !== null && !Array.isArray(candidate);
    merged[key] = isMap(before) && isMap(value) ? mergeValues(before, value) : value;
  }
  return merged;
}

/**
 * A manifest of k8s/ with values filled in: each match of a pattern becomes its first group (kept
 * as it is, if the pattern has one) followed by the value. Fails when a pattern no longer matches,
 * so a changed manifest is never applied with its placeholders.
 */
export async function substitute(file: string, replacements: readonly (readonly [RegExp, string])[]): Promise<string> {
  let text = await readFile(join(REPO_ROOT, file), 'utf8');
  for (const [pattern, value] of replacements) {
    if (!pattern.test(text)) throw new Error(`${file} no longer matches ${pattern}: update testbed/system.ts`);
    text = text.replace(pattern, (...match: unknown[]) => `${typeof match[1] === 'string' ? match[1] : ''}${value}`);
  }
  return text;
}

export { sleep, waitFor };
