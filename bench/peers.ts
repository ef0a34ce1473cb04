// The copiers the clone function is compared with, as command lines: skopeo (Debian), crane and
// regctl (built by scripts/bench-tools). Each is timed from spawn to exit, as a user would see it;
// its peak RSS comes from GNU time where the machine has it.

import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT } from '../testbed/processes.ts';

export interface PeerTool {
  readonly name: string;
  readonly version: string;
  readonly path: string;
  /** Arguments copying `source` to `target` (both "host:port/repo:tag", plain HTTP). */
  args(source: string, target: string, context: PeerContext): string[];
}

export interface PeerContext {
  /** A scratch folder for config files; HOME points here while the tool runs. */
  readonly dir: string;
  readonly registries: readonly string[];
}

export interface PeerRun {
  ms: number;
  /** Peak RSS in KiB and CPU time (GNU time's %M, %U + %S), when /usr/bin/time is there. */
  peakKiB: number | undefined;
  cpuMs: number | undefined;
}

const GNU_TIME = '/usr/bin/time';

const ARGS: Record<string, PeerTool['args']> = {
  // --all: every platform of an index, like the function. --preserve-digests: fail rather than
  // convert or recompress. No --dest-precompute-digests: that option reads each blob to a temporary
  // file first to learn a digest it would only not know if it recompressed; here every digest is
  // known from the manifest, and skopeo already asks the target for each blob (HEAD) before upload.
  skopeo: (source, target, { dir }) => [
    '--policy',
    join(dir, 'policy.json'),
    'copy',
    '--all',
    '--preserve-digests',
    '--src-tls-verify=false',
    '--dest-tls-verify=false',
    `docker://${source}`,
    `docker://${target}`,
  ],
  // crane copies every platform of an index unless --platform is given; default jobs (GOMAXPROCS).
  crane: (source, target) => ['copy', '--insecure', source, target],
  // regctl image copy: every platform; tls=disabled speaks plain HTTP to each registry.
  regctl: (source, target, { registries }) => [
    ...registries.flatMap((host) => ['--host', `reg=${host},tls=disabled`]),
    'image',
    'copy',
    source,
    target,
  ],
};

/** Runs scripts/bench-tools (installs skopeo, builds crane and regctl once) and lists the tools. */
export function installPeers(log: (line: string) => void): PeerTool[] {
  const run = spawnSync(join(REPO_ROOT, 'scripts/bench-tools'), {
    cwd: REPO_ROOT,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  if (run.status !== 0) throw new Error(`scripts/bench-tools failed (${run.status})`);
  const tools: PeerTool[] = [];
  for (const line of run.stdout.trim().split('\n')) {
    const [name, version, ...rest] = line.split(' ');
    if (!name || !version) continue;
    if (version === '-') {
      log(`${name}: ${rest.join(' ')}`);
      continue;
    }
    const args = ARGS[name];
    if (args) tools.push({ name, version, path: rest.join(' '), args });
  }
  return tools;
}

/** A scratch HOME with the files the tools read (skopeo's signature policy: accept anything). */
export async function peerContext(registries: string[]): Promise<PeerContext & { remove(): Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'bench-peer-'));
  await writeFile(join(dir, 'policy.json'), JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
  return { dir, registries, remove: () => rm(dir, { recursive: true, force: true }) };
}

export async function runPeer(tool: PeerTool, source: string, target: string, context: PeerContext): Promise<PeerRun> {
  const args = tool.args(source, target, context);
  const timeFile = join(context.dir, 'time.out');
  const useTime = existsSync(GNU_TIME);
  const [command, argv] = useTime ? [GNU_TIME, ['-f', '%M %U %S', '-o', timeFile, tool.path, ...args]] : [tool.path, args];
  let output = '';
  const started = performance.now();
  const child = spawn(command, argv, {
    cwd: context.dir,
    env: { PATH: process.env.PATH ?? '', HOME: context.dir, XDG_CONFIG_HOME: join(context.dir, 'config') },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout.on('data', (chunk: Buffer) => (output = (output + chunk.toString()).slice(-20_000)));
  child.stderr.on('data', (chunk: Buffer) => (output = (output + chunk.toString()).slice(-20_000)));
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', resolve);
  });
  const ms = performance.now() - started;
  if (code !== 0) throw new Error(`${tool.name} ${args.join(' ')} exited ${code}:\n${output}`);
  let peakKiB: number | undefined;
  let cpu: number | undefined;
  if (useTime) {
    const [maxRss, user, system] = ((await readFile(timeFile, 'utf8')).trim().split('\n').at(-1) ?? '').split(' ').map(Number);
    peakKiB = maxRss || undefined;
    if (user !== undefined && system !== undefined && !Number.isNaN(user + system)) cpu = Math.round((user + system) * 1000);
  }
  return { ms, peakKiB, cpuMs: cpu };
}
