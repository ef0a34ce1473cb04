// The bridge as its own process (`node bridge/main.ts`), so that its memory is its own: peak RSS
// is the kernel's VmHWM from /proc/<pid>/status. CPU time of any process is read from
// /proc/<pid>/stat, so the benchmark can say who was busy (the bridge, kube-apiserver, etcd).

import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { bundleBridge } from '../scripts/bundle-bridge.ts';
import { killOnExit, REPO_ROOT, stopChild } from '../testbed/processes.ts';

const CLOCK_TICKS = 100; // USER_HZ on Linux

export interface MemoryStatus {
  /** Resident now, bytes. */
  readonly rss: number;
  /** Peak resident since the process started (VmHWM), bytes. */
  readonly hwm: number;
  /** Of the resident now: anonymous memory (heap, malloc) and file pages (the node binary, libraries). */
  readonly anon: number;
  readonly file: number;
}

export function memoryOf(pid: number): MemoryStatus | undefined {
  let status: string;
  try {
    status = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return undefined;
  }
  const kib = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? 0) * 1024;
  return { rss: kib('VmRSS'), hwm: kib('VmHWM'), anon: kib('RssAnon'), file: kib('RssFile') + kib('RssShmem') };
}

/** User + system CPU seconds the process has used so far. */
export function cpuSecondsOf(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command (which may hold spaces) start behind the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
  } catch {
    return undefined;
  }
}

/** Pids whose command line contains `needle` and whose executable name is `name`. */
export function findProcesses(name: string, needle: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const argv = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      if (argv[0]?.endsWith(`/${name}`) && argv.some((arg) => arg.includes(needle))) pids.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

export interface BridgeProcess {
  readonly pid: number;
  /** performance.now() at spawn. */
  readonly startedAt: number;
  readonly exited: Promise<number | null>;
  /** Peak RSS seen so far, and RSS samples (every `sampleMs`). */
  memory(): MemoryStatus | undefined;
  readonly samples: { at: number; rss: number }[];
  /** The sample with the most resident memory, with its breakdown. */
  peakSample(): (MemoryStatus & { at: number }) | undefined;
  /** SIGTERM (the bridge's graceful shutdown), SIGKILL after `graceMs`. */
  stop(graceMs?: number): Promise<void>;
}

/**
 * Compiles the bridge as the container image does (tsconfig.build.json) into a folder under
 * node_modules/.cache, where its imports still resolve, and returns the path of its main.js.
 */
/** The bridge as the container runs it: the bundle `npm run build` makes (scripts/bundle-bridge.ts). */
export async function buildBridge(): Promise<string> {
  const outDir = join(REPO_ROOT, 'node_modules', '.cache', 'bridge-bench');
  rmSync(outDir, { recursive: true, force: true });
  return bundleBridge(join(outDir, 'main.mjs'));
}

/**
 * Starts `node <nodeArgs> <entry>` (default bridge/main.ts) with only `env` (and PATH) as its
 * environment. `nodeArgs` are for flags NODE_OPTIONS refuses (--trace-gc).
 */
export function spawnBridge(
  env: Record<string, string>,
  logPath: string,
  entry = 'bridge/main.ts',
  nodeArgs: readonly string[] = [],
  sampleMs = 200,
): BridgeProcess {
  const log = openSync(logPath, 'a');
  let child: ChildProcess;
  try {
    child = spawn(process.execPath, [...nodeArgs, entry], {
      cwd: REPO_ROOT,
      // Only what the bridge is configured with, plus PATH: nothing of the benchmark's environment.
      env: { PATH: process.env.PATH ?? '', ...env },
      stdio: ['ignore', log, log],
    });
  } finally {
    closeSync(log);
  }
  const startedAt = performance.now();
  const pid = child.pid!;
  const samples: { at: number; rss: number }[] = [];
  let peak: (MemoryStatus & { at: number }) | undefined;
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const sampler = setInterval(() => {
    const memory = memoryOf(pid);
    if (memory === undefined) return;
    const at = performance.now();
    samples.push({ at, rss: memory.rss });
    if (peak === undefined || memory.rss > peak.rss) peak = { ...memory, at };
  }, sampleMs);
  sampler.unref();
  void exited.then(() => clearInterval(sampler));
  killOnExit(child);

  return {
    pid,
    startedAt,
    exited,
    samples,
    peakSample: () => peak,
    memory: () => memoryOf(pid),
    stop: (graceMs = 30_000) => stopChild(child, graceMs),
  };
}
