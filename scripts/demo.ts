// `npm run demo`: the whole controller on this machine, for a few seconds, with nothing to set up.
// It starts a real kube-apiserver (with etcd), a source registry holding the example images, a
// Docker-Hub-like backup registry, the clone function and the bridge; applies k8s/rbac,
// k8s/secrets and the example workloads of k8s/setup with kubectl; waits until they are backed up;
// shows what changed, reads the copies back from the backup registry, and stops it all again.
//
// What it needs: kubectl (on the machine image), the packages scripts/test-tools installs, and
// kube-apiserver + etcd from scripts/kube-binaries (built from Go modules once per machine).

import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import {
  containersOf,
  podSpecOf,
  EXAMPLE_IMAGES,
  sleep,
  startSystem,
  waitFor,
  type BridgeProcess,
  type LogLine,
  type System,
  type Workload,
} from '../testbed/system.ts';
import { FINALIZER } from '../bridge/workload.ts';
import { REPO_ROOT } from '../testbed/processes.ts';

const EXAMPLES = [
  { kind: 'deployment', name: 'nginx' },
  { kind: 'daemonset', name: 'node-exporter' },
  { kind: 'statefulset', name: 'redis' },
  { kind: 'cronjob', name: 'nightly-report' },
] as const;

const tty = process.stdout.isTTY === true;
const bold = (text: string) => (tty ? `\x1b[1m${text}\x1b[22m` : text);
const dim = (text: string) => (tty ? `\x1b[2m${text}\x1b[22m` : text);
const say = (text = '') => process.stdout.write(`${text}\n`);
const step = (text: string) => say(dim(`  · ${text}`));
const section = (title: string) => say(`\n${bold(title)}`);

const abort = new AbortController();
let starting: Promise<System> | undefined;
let system: System | undefined;
let script: ChildProcess | undefined;
let stopping: Promise<void> | undefined;

/** Stops whatever has been started so far (also halfway through starting), once. */
function stopAll(): Promise<void> {
  stopping ??= (async () => {
    abort.abort();
    if (script?.exitCode === null) script.kill('SIGTERM');
    await starting?.catch(() => undefined);
    if (system === undefined) return;
    say();
    step('stopping the bridge, the clone function, the registries and the API server');
    await system.stop();
    step('everything the demo started is stopped, its temporary files removed');
  })();
  return stopping;
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    say(`\n${signal === 'SIGINT' ? 'Ctrl-C' : signal}: stopping what the demo started`);
    void stopAll().finally(() => process.exit(130));
  });
}

/** Runs a script of this repository, its progress (stderr) shown; returns its stdout. */
function runScript(name: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', [join(REPO_ROOT, 'scripts', name)], { cwd: REPO_ROOT, stdio: ['inherit', 'pipe', 'inherit'] });
    script = child;
    let stdout = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.once('error', reject);
    child.once('exit', (code) => (code === 0 ? resolve(stdout) : reject(new Error(`scripts/${name} failed (exit ${code})`))));
  });
}

async function workloads(current: System): Promise<Workload[]> {
  const found: Workload[] = [];
  for (const { kind, name } of EXAMPLES) {
    const workload = await current.workload(kind, name, 'default');
    if (workload === undefined) throw new Error(`${kind} default/${name} is gone`);
    found.push(workload);
  }
  return found;
}

function printWorkloads(list: readonly Workload[]): void {
  for (const workload of list) {
    say(`  ${workload.kind} ${workload.metadata.namespace}/${workload.metadata.name}`);
    const podSpec = podSpecOf(workload);
    const containers = [
      ...(podSpec.initContainers ?? []).map((container) => ({ ...container, name: `${container.name} (init)` })),
      ...podSpec.containers,
    ];
    const width = Math.max(...containers.map((container) => container.name.length));
    for (const container of containers) say(`    ${container.name.padEnd(width)}  ${container.image}`);
    const finalizers = workload.metadata.finalizers ?? [];
    say(dim(`    finalizers: ${finalizers.length > 0 ? finalizers.join(', ') : 'none'}`));
  }
}

const settled = (current: System, workload: Workload) => {
  const backupPrefix = `${current.backupLocation.registry}/${current.backupLocation.namespace}/`;
  return (
    containersOf(workload).every(
      (container) => container.image.startsWith(backupPrefix) && container.image.includes('@sha256:'),
    ) && !(workload.metadata.finalizers ?? []).includes(FINALIZER)
  );
};

const LOG_MESSAGES = [
  'became the leader',
  'DaemonSet reconciler: starting reconciliation',
  'Image Cloner: starting cloning process',
  'Image Cloner: image backed up',
  'DaemonSet reconciler: image pointed at its backup',
  'DaemonSet reconciler: finalizer released',
  'DaemonSet reconciler: reconciliation successfully finished',
  'CronJob reconciler: reconciliation successfully finished',
];

function pickLogLines(bridge: BridgeProcess): LogLine[] {
  const picked: LogLine[] = [];
  for (const msg of LOG_MESSAGES) {
    const line = bridge.logs.find((candidate) => candidate.msg === msg && !picked.includes(candidate));
    if (line !== undefined) picked.push(line);
  }
  return picked.sort((a, b) => a.time - b.time);
}

async function main(): Promise<void> {
  const started = Date.now();
  say(bold('Image Clone Controller: the whole system on this machine'));
  say('A real kube-apiserver, two registries, the clone function and the bridge, all on 127.0.0.1.');

  section('1. Tools');
  step('scripts/test-tools: docker-registry, htpasswd, openssl, setpriv (installs what is missing with apt-get)');
  await runScript('test-tools');
  step('scripts/kube-binaries: kube-apiserver and etcd, built from Go modules and cached in ~/.cache');
  step('  the first run on a machine builds them: about 12 minutes on 2 cores; later runs take a second');
  const binDir = (await runScript('kube-binaries')).trim().split('\n').at(-1)!;

  section('2. Starting the system');
  starting = startSystem({ binDir, log: step, sourceThroughProxy: false, signal: abort.signal });
  const current = await starting;
  system = current;
  step(`API server ${current.cluster.server}`);
  step(`source registry ${current.sourceHost} (anonymous), backup registry ${current.backup.host} (token auth, like Docker Hub)`);
  step(`backups go to ${current.backupLocation.registry}/${current.backupLocation.namespace}/… (flat names, as on Docker Hub)`);

  section('3. The example workloads (k8s/setup), images pointed at the local source registry');
  await current.kubectl(['apply', '-f', '-'], await current.exampleWorkloads());
  printWorkloads(await workloads(current));

  section('4. The bridge');
  // An in-cluster bridge would be named by its pod; this one runs with the ServiceAccount's token.
  const bridge = await current.startBridge('image-cloner-deployment-demo');
  const applied = Date.now();
  const after = await waitFor(
    'the example workloads to be backed up and released',
    async () => {
      const list = await workloads(current);
      return list.every((workload) => settled(current, workload)) ? list : undefined;
    },
    120_000,
  );
  step(`both workloads backed up, pinned and released ${((Date.now() - applied) / 1000).toFixed(1)} s after the bridge started`);

  section('5. The workloads now (kubectl get)');
  printWorkloads(after);

  section('6. The backup copies, read back from the backup registry');
  for (const example of EXAMPLE_IMAGES) {
    const source = `${current.sourceHost}/${example.repository}:${example.tag}`;
    const image = example.build();
    const copy = await current.verifyBackup(source, image);
    const root = JSON.parse(new TextDecoder().decode(image.manifests.at(-1)!.bytes)) as { manifests?: unknown[] };
    const pinned = after.some((workload) =>
      containersOf(workload).some((container) => container.image === current.backupOf(source, copy.digest)),
    );
    say(`  ${current.backupLocation.registry}/${copy.repository}`);
    say(`    tag     ${copy.tag}`);
    say(`    digest  ${copy.digest}  ${dim('(the source digest, unchanged)')}`);
    say(
      dim(
        `    ${image.manifests.length} manifest${image.manifests.length === 1 ? '' : 's'}` +
          `${root.manifests ? ` (an index over ${root.manifests.length} entries)` : ''} read back byte for byte;` +
          ` ${pinned ? 'a workload is pinned to it' : 'no workload is pinned to it'}`,
      ),
    );
  }

  say(
    dim('  (one level under the account, as on Docker Hub: the name spells the source with "/" → "_", "." → "__", ":" → "----")'),
  );

  section('7. Events (kubectl get events -n default)');
  await sleep(300); // events are written in the background, just after the patch
  const events = JSON.parse(await current.kubectl(['get', 'events', '-n', 'default', '-o', 'json'])) as {
    items: { type: string; reason: string; message: string; involvedObject: { kind: string; name: string } }[];
  };
  for (const event of events.items) {
    say(
      `  ${event.type.padEnd(7)} ${event.reason.padEnd(9)} ${event.involvedObject.kind}/${event.involvedObject.name}: ${event.message}`,
    );
  }

  section('8. A few lines of the bridge log (pino JSON, as `kubectl logs` shows them)');
  for (const line of pickLogLines(bridge)) {
    const { bridge: _name, ...fields } = line;
    say(`  ${JSON.stringify(fields)}`);
  }

  await stopAll();
  say(`\nDone in ${((Date.now() - started) / 1000).toFixed(0)} s.`);
}

main().then(
  () => process.exit(0),
  async (error: unknown) => {
    if (abort.signal.aborted) return; // interrupted: the signal handler stops and exits
    process.stderr.write(`\ndemo failed: ${error instanceof Error ? error.message : String(error)}\n`);
    const bridge = system?.bridges.at(-1);
    if (bridge !== undefined)
      process.stderr.write(`--- last lines of the bridge ---\n${bridge.output().split('\n').slice(-20).join('\n')}\n`);
    await stopAll().catch(() => {});
    process.exit(1);
  },
);
