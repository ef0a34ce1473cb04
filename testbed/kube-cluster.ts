/**
 * A real Kubernetes API server for end-to-end tests: etcd + kube-apiserver on loopback, started
 * and stopped by the test itself. No kube-controller-manager, scheduler or kubelet: objects are
 * stored, watched, validated, admitted and authorized exactly as in a cluster, but nothing acts
 * on them (no ReplicaSets, Pods, default ServiceAccounts or garbage collection).
 *
 * The binaries come from `scripts/kube-binaries` (built once per machine from Go modules and
 * cached outside the repository); `KUBE_BINARIES_DIR` or `options.binDir` points elsewhere.
 * kubectl is the one installed on the machine.
 *
 *   const cluster = await startKubeCluster();
 *   await cluster.kubectl(['apply', '-f', '-'], { input: manifest });
 *   await cluster.stop();
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { closeSync, existsSync, openSync, readFileSync, rmSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePorts } from './ports.ts';
import { diesWithThisProcess, killOnExit, REPO_ROOT } from './processes.ts';

export interface KubeClusterOptions {
  /** Folder holding `kube-apiserver` and `etcd`. Default: $KUBE_BINARIES_DIR, else the output of
   *  scripts/kube-binaries (which builds them on first use: minutes, not seconds). */
  binDir?: string;
  /** How long each component may take to become ready. Default 60 s. */
  readyTimeoutMs?: number;
  /** Extra kube-apiserver flags, appended after the defaults (a later flag wins). */
  apiServerArgs?: readonly string[];
  /** Keep the temp dir (logs, etcd data, kubeconfigs) after stop(), for debugging.
   *  Default: true when $KUBE_CLUSTER_KEEP=1. */
  keepDir?: boolean;
}

export interface KubectlOptions {
  /** Written to kubectl's stdin (e.g. a manifest for `apply -f -`). */
  input?: string;
  /** Another kubeconfig than the admin one (e.g. from serviceAccountKubeconfig). */
  kubeconfig?: string;
  /** Kill kubectl after this long. Default 60 s. */
  timeoutMs?: number;
}

export interface KubectlResult {
  stdout: string;
  stderr: string;
  /** kubectl's exit code (0 = success). */
  code: number;
}

export interface StopApiServerOptions {
  /** SIGKILL instead of SIGTERM: a crash rather than a shutdown. */
  abrupt?: boolean;
}

export interface KubeCluster {
  /** https://127.0.0.1:PORT — stays the same across restartApiServer(). */
  readonly server: string;
  /** PEM bundle that verifies the API server's serving certificate. */
  readonly caFile: string;
  /** Bearer token of user "admin" in group system:masters (bypasses RBAC). */
  readonly adminToken: string;
  /** Kubeconfig for the admin user. */
  readonly kubeconfigPath: string;
  /** Temp dir holding logs, etcd data, keys and kubeconfigs; removed by stop(). */
  readonly dir: string;
  /** Log files of the two processes (appended to across restarts). */
  readonly logs: { readonly etcd: string; readonly apiServer: string };
  /** Runs the system kubectl against this cluster; never throws for a non-zero exit. */
  kubectl(args: readonly string[], options?: KubectlOptions): Promise<KubectlResult>;
  /** Issues a 1 h token for an existing ServiceAccount (TokenRequest API). */
  serviceAccountToken(namespace: string, name: string): Promise<string>;
  /** Writes a kubeconfig authenticating as an existing ServiceAccount; returns its path. */
  serviceAccountKubeconfig(namespace: string, name: string): Promise<string>;
  /** Stops kube-apiserver: open connections and watches end. By default gracefully (SIGTERM:
   *  watches are closed cleanly, about 1 s); `abrupt` kills it (SIGKILL: connections reset). */
  stopApiServer(options?: StopApiServerOptions): Promise<void>;
  /** Starts kube-apiserver again on the same port and waits until it is ready. */
  startApiServer(): Promise<void>;
  /** stopApiServer() then startApiServer(); etcd and thus all data stay. */
  restartApiServer(options?: StopApiServerOptions): Promise<void>;
  /** Kills both processes and removes the temp dir (unless keepDir). Idempotent. */
  stop(): Promise<void>;
}

export async function startKubeCluster(options: KubeClusterOptions = {}): Promise<KubeCluster> {
  const binDir = options.binDir ?? process.env.KUBE_BINARIES_DIR ?? (await buildOrFindBinaries());
  const readyTimeoutMs = options.readyTimeoutMs ?? 60_000;
  const keepDir = options.keepDir ?? process.env.KUBE_CLUSTER_KEEP === '1';
  for (const binary of ['etcd', 'kube-apiserver']) {
    if (!existsSync(join(binDir, binary))) throw new Error(`${binary} not found in ${binDir}`);
  }

  await removeAbandonedDirs();
  const dir = await mkdtemp(join(tmpdir(), dirPrefix));
  if (!keepDir) {
    cleanupOnExit.dirs.add(dir);
    await writeFile(join(dir, ownerFile), `${process.pid}\n`);
  }
  const logs = { etcd: join(dir, 'etcd.log'), apiServer: join(dir, 'kube-apiserver.log') };
  const [etcdClientPort, etcdPeerPort, apiPort] = (await freePorts(3)) as [number, number, number];
  const server = `https://127.0.0.1:${apiPort}`;
  // The API server writes a self-signed certificate (and its CA) here on first start and reuses
  // it on restarts, so caFile stays valid across restartApiServer().
  const certDir = join(dir, 'pki');
  const caFile = join(certDir, 'apiserver.crt');
  const adminToken = randomBytes(24).toString('hex');
  const kubeconfigPath = join(dir, 'admin.kubeconfig');
  const kubectlCacheDir = join(dir, 'kubectl-cache');

  // Service-account tokens are signed with this key; EC keeps generation instant. The
  // verification flag gets the public half: it does not read PKCS#8 private keys.
  const saKeyFile = join(dir, 'sa.key');
  const saPublicKeyFile = join(dir, 'sa.pub');
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  await writeFile(saKeyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  await writeFile(saPublicKeyFile, publicKey.export({ type: 'spki', format: 'pem' }));
  const tokensFile = join(dir, 'tokens.csv');
  await writeFile(tokensFile, `${adminToken},admin,admin-uid,system:masters\n`, { mode: 0o600 });
  await writeKubeconfig(kubeconfigPath, server, caFile, 'admin', adminToken);

  let etcd: Running | undefined;
  let apiServer: Running | undefined;
  let stopped = false;

  const etcdArgs = [
    '--name=test',
    `--data-dir=${join(dir, 'etcd')}`,
    `--listen-client-urls=http://127.0.0.1:${etcdClientPort}`,
    `--advertise-client-urls=http://127.0.0.1:${etcdClientPort}`,
    `--listen-peer-urls=http://127.0.0.1:${etcdPeerPort}`,
    `--initial-advertise-peer-urls=http://127.0.0.1:${etcdPeerPort}`,
    `--initial-cluster=test=http://127.0.0.1:${etcdPeerPort}`,
    '--log-level=warn',
    // Test data is thrown away; skipping fsync makes every write several times faster.
    ...(etcdSupports(binDir, '--unsafe-no-fsync') ? ['--unsafe-no-fsync'] : []),
  ];
  const apiServerArgs = [
    `--etcd-servers=http://127.0.0.1:${etcdClientPort}`,
    '--bind-address=127.0.0.1',
    '--advertise-address=127.0.0.1',
    `--secure-port=${apiPort}`,
    `--cert-dir=${certDir}`,
    '--service-cluster-ip-range=10.0.0.0/24',
    '--allow-privileged=true',
    '--authorization-mode=RBAC',
    `--token-auth-file=${tokensFile}`,
    // The ServiceAccount admission plugin wants a default ServiceAccount per namespace, which
    // only kube-controller-manager creates.
    '--disable-admission-plugins=ServiceAccount',
    `--service-account-issuer=${server}`,
    `--service-account-key-file=${saPublicKeyFile}`,
    `--service-account-signing-key-file=${saKeyFile}`,
    // No Endpoints object for the "kubernetes" Service is needed (nothing routes to it).
    '--endpoint-reconciler-type=none',
    '--profiling=false',
    ...(options.apiServerArgs ?? []),
  ];

  const startApiServer = async (): Promise<void> => {
    if (stopped) throw new Error('the cluster was stopped');
    if (apiServer) throw new Error('kube-apiserver is already running');
    const started = launch('kube-apiserver', join(binDir, 'kube-apiserver'), apiServerArgs, logs.apiServer);
    apiServer = started;
    try {
      await waitUntil('kube-apiserver', started, readyTimeoutMs, () => apiServerReady(server, certDir, caFile, adminToken));
    } catch (error) {
      await terminate(started, 0);
      apiServer = undefined;
      throw error;
    }
  };

  const stopApiServer = async (stopOptions: StopApiServerOptions = {}): Promise<void> => {
    const running = apiServer;
    apiServer = undefined;
    if (running) await terminate(running, stopOptions.abrupt ? 0 : 10_000);
  };

  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    await stopApiServer();
    if (etcd) await terminate(etcd, 5_000);
    etcd = undefined;
    cleanupOnExit.dirs.delete(dir);
    if (!keepDir) await rm(dir, { recursive: true, force: true });
  };

  try {
    const startedEtcd = launch('etcd', join(binDir, 'etcd'), etcdArgs, logs.etcd);
    etcd = startedEtcd;
    await waitUntil('etcd', startedEtcd, readyTimeoutMs, () => etcdHealthy(etcdClientPort));
    await startApiServer();
  } catch (error) {
    await stop();
    throw error;
  }

  const kubectl = (args: readonly string[], kubectlOptions: KubectlOptions = {}): Promise<KubectlResult> =>
    runKubectl(
      [`--kubeconfig=${kubectlOptions.kubeconfig ?? kubeconfigPath}`, `--cache-dir=${kubectlCacheDir}`, ...args],
      kubectlOptions.input,
      kubectlOptions.timeoutMs ?? 60_000,
    );

  const serviceAccountToken = async (namespace: string, name: string): Promise<string> => {
    // TokenRequest refuses durations under 10 minutes; 1 h outlives any test.
    const result = await kubectl(['create', 'token', name, '--namespace', namespace, '--duration=1h']);
    if (result.code !== 0) {
      throw new Error(`kubectl create token ${namespace}/${name} failed (${result.code}): ${result.stderr.trim()}`);
    }
    return result.stdout.trim();
  };

  const serviceAccountKubeconfig = async (namespace: string, name: string): Promise<string> => {
    const token = await serviceAccountToken(namespace, name);
    const path = join(dir, `sa-${namespace}-${name}.kubeconfig`);
    await writeKubeconfig(path, server, caFile, `system:serviceaccount:${namespace}:${name}`, token, namespace);
    return path;
  };

  return {
    server,
    caFile,
    adminToken,
    kubeconfigPath,
    dir,
    logs,
    kubectl,
    serviceAccountToken,
    serviceAccountKubeconfig,
    stopApiServer,
    startApiServer,
    restartApiServer: async (stopOptions?: StopApiServerOptions) => {
      await stopApiServer(stopOptions);
      await startApiServer();
    },
    stop,
  };
}

// --- binaries ---------------------------------------------------------------------------------

/** Runs scripts/kube-binaries (instant when cached) and returns the bin dir it prints last. */
async function buildOrFindBinaries(): Promise<string> {
  const script = join(REPO_ROOT, 'scripts', 'kube-binaries');
  // The script's progress (stderr) goes straight to the test output: a cold build takes minutes.
  const child = spawn('bash', [script], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
  let stdout = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
  const code = await new Promise<number | null>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', resolve);
  });
  const binDir = stdout.trim().split('\n').at(-1)?.trim();
  if (code !== 0 || !binDir) throw new Error(`scripts/kube-binaries failed (exit ${code})`);
  return binDir;
}

const flagSupport = new Map<string, boolean>();

/** Whether this etcd build knows a flag (--unsafe-no-fsync is absent from etcd 3.4). */
function etcdSupports(binDir: string, flag: string): boolean {
  const key = `${binDir}\0${flag}`;
  let supported = flagSupport.get(key);
  if (supported === undefined) {
    const help = spawnSync(join(binDir, 'etcd'), ['--help'], { encoding: 'utf8' });
    supported = `${help.stdout}${help.stderr}`.includes(flag);
    flagSupport.set(key, supported);
  }
  return supported;
}

// --- processes --------------------------------------------------------------------------------

interface Running {
  readonly name: string;
  readonly child: ChildProcess;
  readonly logPath: string;
  /** Settles when the process has exited, with a description of how. */
  readonly exited: Promise<string>;
  exitedWith: string | undefined;
}

/**
 * The temp dirs to remove if the test process exits without calling stop() (a crash, a timeout);
 * its processes are killOnExit's.
 */
const cleanupOnExit = { dirs: new Set<string>(), installed: false };

function installExitCleanup(): void {
  if (cleanupOnExit.installed) return;
  cleanupOnExit.installed = true;
  // 'exit' handlers must be synchronous: rmSync is.
  process.on('exit', () => {
    for (const dir of cleanupOnExit.dirs) rmSync(dir, { recursive: true, force: true });
  });
}

const dirPrefix = 'kube-cluster-';
const ownerFile = 'owner.pid';

/**
 * A test process killed by a signal runs no 'exit' handler, so its temp dir (over 100 MB, mostly
 * etcd's preallocated WAL) stays behind; its processes die with it (diesWithThisProcess). Each
 * dir names its owner; dirs whose owner is gone are removed by the next cluster's start.
 */
async function removeAbandonedDirs(): Promise<void> {
  const entries = await readdir(tmpdir()).catch(() => []);
  for (const entry of entries.filter((name) => name.startsWith(dirPrefix))) {
    const dir = join(tmpdir(), entry);
    const owner = Number.parseInt(await readFile(join(dir, ownerFile), 'utf8').catch(() => ''), 10);
    if (Number.isInteger(owner) && owner > 0 && !processAlive(owner)) {
      await rm(dir, { recursive: true, force: true });
    }
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function launch(name: string, binary: string, args: readonly string[], logPath: string): Running {
  installExitCleanup();
  const log = openSync(logPath, 'a');
  let child: ChildProcess;
  try {
    child = spawn(...diesWithThisProcess(binary, args), { stdio: ['ignore', log, log] });
  } finally {
    closeSync(log); // the child holds its own copy
  }
  killOnExit(child);
  const running: Running = {
    name,
    child,
    logPath,
    exitedWith: undefined,
    exited: new Promise<string>((resolve) => {
      const done = (how: string): void => {
        running.exitedWith ??= how;
        resolve(running.exitedWith);
      };
      child.on('error', (error) => done(`failed to start: ${error.message}`));
      child.on('exit', (code, signal) => done(signal ? `killed by ${signal}` : `exited with code ${code}`));
    }),
  };
  return running;
}

/** SIGTERM, then SIGKILL after graceMs; resolves once the process is gone. */
async function terminate(running: Running, graceMs: number): Promise<void> {
  if (running.exitedWith !== undefined) return;
  running.child.kill(graceMs > 0 ? 'SIGTERM' : 'SIGKILL');
  const timer = setTimeout(() => running.child.kill('SIGKILL'), graceMs);
  await running.exited;
  clearTimeout(timer);
}

/** Polls `ready` until it returns true; fails early with the log tail if the process dies. */
async function waitUntil(what: string, running: Running, timeoutMs: number, ready: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (running.exitedWith !== undefined) {
      throw new Error(`${what} ${running.exitedWith} during startup\n${await logTail(running.logPath)}`);
    }
    if (await ready()) return;
    if (Date.now() > deadline) {
      throw new Error(`${what} not ready after ${timeoutMs} ms\n${await logTail(running.logPath)}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function logTail(path: string, lines = 40): Promise<string> {
  const text = await readFile(path, 'utf8').catch(() => '');
  return `--- last ${lines} lines of ${path} ---\n${text.trimEnd().split('\n').slice(-lines).join('\n')}`;
}

async function etcdHealthy(port: number): Promise<boolean> {
  try {
    const response = await fetch(`http://127.0.0.1:${port}/health`, { signal: AbortSignal.timeout(2_000) });
    const body = (await response.json()) as { health?: unknown };
    return response.ok && body.health === 'true';
  } catch {
    return false;
  }
}

/**
 * Ready means /readyz answers ok (RBAC bootstrap roles included) and the system namespaces exist:
 * the API server creates default/kube-system/kube-public from a controller of its own that
 * /readyz does not wait for, and objects cannot be created in a namespace that does not exist.
 */
async function apiServerReady(server: string, certDir: string, caFile: string, token: string): Promise<boolean> {
  // The serving certificate appears in certDir a moment after the process starts.
  if (!existsSync(caFile) || !existsSync(join(certDir, 'apiserver.key'))) return false;
  const ca = readFileSync(caFile);
  const get = (path: string): Promise<number> =>
    new Promise((resolve) => {
      const req = request(`${server}${path}`, { ca, headers: { authorization: `Bearer ${token}` }, timeout: 2_000 });
      req.on('response', (response) => {
        response.resume();
        resolve(response.statusCode ?? 0);
      });
      req.on('timeout', () => req.destroy());
      req.on('error', () => resolve(0));
      req.end();
    });
  if ((await get('/readyz')) !== 200) return false;
  for (const namespace of ['default', 'kube-system', 'kube-public']) {
    if ((await get(`/api/v1/namespaces/${namespace}`)) !== 200) return false;
  }
  return true;
}

/** Distinct free ports, all held open at once so that none is handed out twice. */

// --- kubectl and kubeconfig -------------------------------------------------------------------

function runKubectl(args: readonly string[], input: string | undefined, timeoutMs: number): Promise<KubectlResult> {
  return new Promise((resolve, reject) => {
    const child = spawn('kubectl', args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (error) => {
      clearTimeout(timer);
      reject(new Error(`cannot run kubectl: ${error.message}`));
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      if (timedOut) {
        reject(new Error(`kubectl ${args.join(' ')} timed out after ${timeoutMs} ms\n${stderr}`));
      } else {
        resolve({ stdout, stderr, code: code ?? 1 });
      }
    });
    // kubectl may exit before reading stdin (e.g. a usage error); that is not our error.
    child.stdin.on('error', () => {});
    child.stdin.end(input ?? '');
  });
}

/** Kubeconfig files are YAML, and JSON is YAML: no serializer needed. */
async function writeKubeconfig(
  path: string,
  server: string,
  caFile: string,
  user: string,
  token: string,
  namespace = 'default',
): Promise<void> {
  const config = {
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name: 'test', cluster: { server, 'certificate-authority': caFile } }],
    users: [{ name: user, user: { token } }],
    contexts: [{ name: user, context: { cluster: 'test', user, namespace } }],
    'current-context': user,
  };
  await mkdir(join(path, '..'), { recursive: true });
  await writeFile(path, `${JSON.stringify(config, null, 2)}\n`, { mode: 0o600 });
}
