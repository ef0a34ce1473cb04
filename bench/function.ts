// The clone function under benchmark: `node functions/node.ts` as users run it (npm start), spawned
// directly so its pid is known and its memory can be read from /proc. testbed's
// startNodeFunction hides the process and defaults to debug logging; a benchmark wants the
// production default (info) and the process's VmHWM.

import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import type { CloneResult } from '../functions/contract/index.ts';
import { freePort } from '../testbed/ports.ts';
import { REPO_ROOT, stopChild } from '../testbed/processes.ts';
import { cpuMs, processMemory, type Memory } from './proc.ts';

/** Environment variables passed through from the bench's own environment (for experiments). */
const TUNABLES = ['IMAGE_CONCURRENCY', 'BLOB_CONCURRENCY', 'TRANSFER_CONCURRENCY', 'SMALL_BLOBS_PER_SLOT', 'LOG_LEVEL'];

/** One entry of the function's `results`, as the engine reports it. */
export type { CloneResult } from '../functions/contract/index.ts';

export interface BenchFunction {
  readonly pid: number;
  readonly url: string;
  /** POST /clone; `ms` is the HTTP round-trip as the caller sees it. */
  clone(images: string[]): Promise<{ ms: number; results: CloneResult[] }>;
  memory(): Memory;
  /** CPU time the process used so far, ms. */
  cpuMs(): number;
  stop(): Promise<void>;
}

/**
 * The node flags of package.json's start script (`node --max-semi-space-size=1 functions/node.ts`),
 * which the Dockerfile sets too: the function is measured as it is run.
 */
export function startFlags(): string[] {
  const { scripts } = JSON.parse(readFileSync(resolve(REPO_ROOT, 'package.json'), 'utf8')) as { scripts: { start: string } };
  const words = scripts.start.split(/\s+/);
  if (words[0] !== 'node') throw new Error(`unexpected start script: ${scripts.start}`);
  return words.slice(1).filter((word) => word.startsWith('--'));
}

export async function startBenchFunction(env: Record<string, string>): Promise<BenchFunction> {
  const port = await freePort();
  const authToken = randomBytes(16).toString('hex');
  const passed = Object.fromEntries(TUNABLES.flatMap((name) => (process.env[name] ? [[name, process.env[name]!]] : [])));
  const nodeOptions = [...startFlags(), ...(process.env.BENCH_NODE_OPTIONS?.split(' ').filter(Boolean) ?? [])];
  const child = spawn(process.execPath, [...nodeOptions, process.env.BENCH_FUNCTION_ENTRY ?? 'functions/node.ts'], {
    cwd: REPO_ROOT,
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '',
      LOG_LEVEL: 'info',
      ...passed,
      ...env,
      HOST: '127.0.0.1',
      PORT: String(port),
      AUTH_TOKEN: authToken,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const keep = (chunk: Buffer) => {
    output = (output + chunk.toString()).slice(-200_000);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  const url = `http://127.0.0.1:${port}`;
  await waitHealthy(url, child, () => output);

  return {
    pid: child.pid!,
    url,
    async clone(images) {
      const started = performance.now();
      const response = await fetch(`${url}/clone`, {
        method: 'POST',
        headers: { authorization: `Bearer ${authToken}`, 'content-type': 'application/json' },
        body: JSON.stringify({ images }),
      });
      const text = await response.text();
      const ms = performance.now() - started;
      if (response.status !== 200) throw new Error(`POST /clone answered ${response.status}: ${text}`);
      return { ms, results: (JSON.parse(text) as { results: CloneResult[] }).results };
    },
    memory: () => processMemory(child.pid!),
    cpuMs: () => cpuMs(child.pid!),
    stop: () => stopChild(child),
  };
}

async function waitHealthy(url: string, child: ChildProcess, logs: () => string): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`the clone function exited (${child.exitCode}):\n${logs().slice(-4000)}`);
    try {
      const response = await fetch(`${url}/healthz`);
      await response.arrayBuffer();
      if (response.ok) return;
    } catch {
      // Not listening yet.
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`the clone function did not become healthy:\n${logs().slice(-4000)}`);
}
