// The clone function on Node: `npm start`, and the container's function role. Reads the
// configuration from the environment, serves the Hono app, runs callback jobs in this process.

import { readFileSync } from 'node:fs';
import { serve } from '@hono/node-server';
import { pino } from 'pino';
import { Agent, fetch as undiciFetch } from 'undici';
import { createApp, type CloneJob, type JobRunner } from './app.ts';
import { deliverCallback } from './callback.ts';
import { ConfigError, loadConfig, type FunctionConfig } from './config.ts';
import type { Logger } from './copy/image.ts';
import { createEngine, type CloneEngine } from './engine.ts';
import { createFunctionMetrics } from './metrics.ts';
import type { FetchLike } from './registry/auth.ts';
import { DEFAULT_RETRY_POLICY } from './registry/retry.ts';

export function readConfig(env: NodeJS.ProcessEnv = process.env): FunctionConfig {
  const file = env.REGISTRY_AUTH_FILE;
  let fileContent: string | undefined;
  if (file) {
    try {
      fileContent = readFileSync(file, 'utf8');
    } catch (error) {
      throw new ConfigError(
        `invalid configuration: REGISTRY_AUTH_FILE: cannot read ${file} (${(error as NodeJS.ErrnoException).code})`,
      );
    }
  }
  return loadConfig(env, fileContent);
}

/** Explicit pools: a few connections per registry, kept alive between blobs. */
function registryFetch(): FetchLike {
  const dispatcher = new Agent({ connections: 16, keepAliveTimeout: 30_000, connectTimeout: 15_000 });
  return ((input: string | URL | Request, init?: RequestInit) =>
    undiciFetch(
      input as Parameters<typeof undiciFetch>[0],
      { ...(init as object), dispatcher } as Parameters<typeof undiciFetch>[1],
    )) as unknown as FetchLike;
}

/** Callback jobs in this process: started at once, their callbacks retried until the deadline. */
class InProcessJobs implements JobRunner {
  readonly #engine: CloneEngine;
  readonly #config: FunctionConfig;
  readonly #logger: Logger;
  readonly #fetch: FetchLike;
  readonly running = new Set<Promise<void>>();

  constructor(engine: CloneEngine, config: FunctionConfig, logger: Logger, fetch: FetchLike) {
    this.#engine = engine;
    this.#config = config;
    this.#logger = logger;
    this.#fetch = fetch;
  }

  async submit(job: CloneJob): Promise<void> {
    const run = this.#run(job).finally(() => this.running.delete(run));
    this.running.add(run);
  }

  async #run(job: CloneJob): Promise<void> {
    const results = await this.#engine.cloneAll(job.images);
    await deliverCallback({
      fetch: this.#fetch,
      url: job.callback.url,
      secret: this.#config.callbackSecret!,
      job: job.id,
      body: JSON.stringify({ job: job.id, context: job.callback.context ?? null, results }),
      deadlineMs: this.#config.callbackDeadlineSeconds * 1000,
      policy: DEFAULT_RETRY_POLICY,
      logger: this.#logger,
    });
  }
}

export function startFunction(env: NodeJS.ProcessEnv = process.env) {
  const config = readConfig(env);
  const logger = pino({ level: config.logLevel, base: { component: 'clone-function' } });
  const metrics = createFunctionMetrics();
  const fetch = registryFetch();
  const engine = createEngine({
    config,
    fetch,
    runtime: { sizedBody: (stream) => stream },
    logger,
    observer: metrics.observer,
    userAgent: 'image-clone-controller',
  });
  const jobs = config.callbackSecret ? new InProcessJobs(engine, config, logger, fetch) : undefined;
  const app = createApp({
    authToken: config.authToken,
    engine,
    logger,
    maxImagesPerRequest: config.maxImagesPerRequest,
    ...(jobs && { jobs }),
    extend: (routes) => {
      routes.get('/metrics', async (c) =>
        c.body(await metrics.registry.metrics(), 200, { 'content-type': metrics.registry.contentType }),
      );
    },
  });
  const server = serve({ fetch: app.fetch, port: config.port, hostname: env.HOST ?? '0.0.0.0' }, (info) => {
    logger.info(
      { port: info.port, backupRegistry: config.backup.registry, backupNamespace: config.backup.namespace },
      'clone function listening',
    );
  });

  const shutdown = async (signal: string) => {
    logger.info({ signal, jobs: jobs?.running.size ?? 0 }, 'shutting down');
    server.close();
    // Jobs in flight finish (their callbacks too) unless the platform kills us first.
    await Promise.allSettled([...(jobs?.running ?? [])]);
    process.exit(0);
  };
  process.once('SIGTERM', () => void shutdown('SIGTERM'));
  process.once('SIGINT', () => void shutdown('SIGINT'));
  return { server, config, logger };
}

if (import.meta.main) {
  try {
    startFunction();
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`${error.message}\n`);
      process.exit(2);
    }
    throw error;
  }
}
