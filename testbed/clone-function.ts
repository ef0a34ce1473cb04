// Starts the clone function the way users run it: `node functions/node.ts` (npm start), or the
// Worker in workerd through `wrangler dev` with the project's wrangler.toml. Configuration goes
// through the environment or .dev.vars, never argv.

import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './ports.ts';
import { killOnExit, REPO_ROOT, stopChild } from './processes.ts';

export interface CloneFunction {
  readonly runtime: 'node' | 'worker';
  readonly url: string;
  readonly authToken: string;
  /** POST /clone with the token; the parsed JSON and status. */
  clone(body: unknown, headers?: Record<string, string>): Promise<{ status: number; body: any }>;
  /** stdout and stderr, the last MAX_LOG_CHARS of them. */
  logs(): string;
  /** Whether logs() lost its beginning to MAX_LOG_CHARS. */
  logsCut(): boolean;
  stop(): Promise<void>;
}

export type FunctionEnv = Record<string, string>;

const MAX_LOG_CHARS = 2_000_000;

function withToken(env: FunctionEnv): FunctionEnv & { AUTH_TOKEN: string } {
  return { AUTH_TOKEN: randomBytes(16).toString('hex'), LOG_LEVEL: 'debug', ...env };
}

function track(child: ChildProcess): Output {
  let output = '';
  let cut = false;
  const append = (chunk: Buffer) => {
    output += chunk.toString();
    if (output.length > MAX_LOG_CHARS) {
      output = output.slice(-MAX_LOG_CHARS);
      cut = true;
    }
  };
  child.stdout?.on('data', append);
  child.stderr?.on('data', append);
  killOnExit(child);
  return { logs: () => output, logsCut: () => cut };
}

type Output = Pick<CloneFunction, 'logs' | 'logsCut'>;

async function waitHealthy(url: string, child: ChildProcess, logs: () => string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`the clone function exited (${child.exitCode}):\n${logs().slice(-4000)}`);
    try {
      const response = await fetch(`${url}/healthz`);
      if (response.ok) return;
    } catch {
      // Not listening yet.
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`the clone function did not become healthy in ${timeoutMs} ms:\n${logs().slice(-4000)}`);
}

function client(
  runtime: CloneFunction['runtime'],
  url: string,
  authToken: string,
  output: Output,
  stop: () => Promise<void>,
): CloneFunction {
  return {
    runtime,
    url,
    authToken,
    logs: output.logs,
    logsCut: output.logsCut,
    stop,
    async clone(body, headers = {}) {
      const response = await fetch(`${url}/clone`, {
        method: 'POST',
        headers: { authorization: `Bearer ${authToken}`, 'content-type': 'application/json', ...headers },
        body: typeof body === 'string' ? body : JSON.stringify(body),
      });
      const text = await response.text();
      let parsed: unknown = text;
      try {
        parsed = JSON.parse(text);
      } catch {
        // NDJSON or plain text: the caller reads `body` as text.
      }
      return { status: response.status, body: parsed };
    },
  };
}

/** `node functions/node.ts` with the given environment (nothing inherited but PATH and HOME). */
export async function startNodeFunction(env: FunctionEnv): Promise<CloneFunction> {
  const port = await freePort();
  const full = withToken({ HOST: '127.0.0.1', ...env, PORT: String(port) });
  const child = spawn(process.execPath, ['functions/node.ts'], {
    cwd: REPO_ROOT,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...full },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const output = track(child);
  const url = `http://127.0.0.1:${port}`;
  await waitHealthy(url, child, output.logs, 20_000);
  return client('node', url, full.AUTH_TOKEN, output, () => stopChild(child));
}

/** dotenv keeps single-quoted values literally (JSON's double quotes included). */
function dotenvValue(value: string): string {
  if (value.includes("'") || value.includes('\n')) throw new Error(`cannot write ${JSON.stringify(value)} to .dev.vars`);
  return `'${value}'`;
}

/**
 * The Worker in workerd via `wrangler dev`, with the project's wrangler.toml (its vars, Queue and
 * limits), from a scratch folder that holds the test's .dev.vars.
 */
export async function startWorkerFunction(env: FunctionEnv): Promise<CloneFunction> {
  const port = await freePort();
  const inspectorPort = await freePort();
  const full = withToken(env);
  const dir = await mkdtemp(join(tmpdir(), 'clone-worker-'));
  const config = (await readFile(join(REPO_ROOT, 'wrangler.toml'), 'utf8')).replace(
    /^main = .*$/m,
    `main = ${JSON.stringify(join(REPO_ROOT, 'functions/worker.ts'))}`,
  );
  await writeFile(join(dir, 'wrangler.toml'), config);
  await writeFile(
    join(dir, '.dev.vars'),
    Object.entries(full)
      .map(([key, value]) => `${key}=${dotenvValue(value)}`)
      .join('\n'),
    { mode: 0o600 },
  );
  const wrangler = join(REPO_ROOT, 'node_modules/wrangler/bin/wrangler.js');
  const child = spawn(
    process.execPath,
    [
      wrangler,
      'dev',
      '--ip',
      '127.0.0.1',
      '--port',
      String(port),
      '--inspector-port',
      String(inspectorPort),
      '--show-interactive-dev-session=false',
    ],
    {
      cwd: dir,
      env: {
        PATH: process.env.PATH ?? '',
        HOME: process.env.HOME ?? '',
        CI: 'true',
        WRANGLER_SEND_METRICS: 'false',
        WRANGLER_LOG_PATH: join(dir, 'logs'),
        XDG_CONFIG_HOME: join(dir, 'config'),
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  const output = track(child);
  const url = `http://127.0.0.1:${port}`;
  await waitHealthy(url, child, output.logs, 90_000);
  return client('worker', url, full.AUTH_TOKEN, output, async () => {
    await stopChild(child);
    await rm(dir, { recursive: true, force: true });
  });
}
