// The clone function on Node: `npm start`, and the container's function role. Reads the
// configuration from the environment, serves the Hono app, runs callback jobs in this process.

import { readFileSync } from 'node:fs';
import type { Server } from 'node:http';
import { serve } from '@hono/node-server';
import { pino } from 'pino';
import { describeError } from '../lib/errors.ts';
import { createApp } from './app.ts';
import { ConfigError, loadConfig, type FunctionConfig } from './config.ts';
import { createEngine } from './engine.ts';
import { runCloneJob, type CloneJob, type JobRunner, type JobSettings } from './jobs.ts';
import { createFunctionMetrics } from './metrics.ts';
import { registryFetch } from './node/registry-fetch.ts';
import { DEFAULT_RETRY_POLICY } from './registry/retry.ts';
import { VERSION } from './version.ts';

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

/** Callback jobs in this process: started at once, their callbacks retried until the deadline. */
class InProcessJobs implements JobRunner {
  readonly #settings: JobSettings;
  readonly running = new Set<Promise<boolean>>();

  constructor(settings: JobSettings) {
    this.#settings = settings;
  }

  async submit(job: CloneJob): Promise<void> {
    const run = runCloneJob(job, this.#settings).finally(() => this.running.delete(run));
    this.running.add(run);
  }
}

/**
 * Bounds on what a client can hold: a request's headers must arrive within 20 s and its body (at
 * most 256 KiB) within 60 s; an idle kept-alive connection closes after 5 s; 512 connections at
 * once. A synchronous copy's answer may take as long as the copy (the response has no timeout).
 */
export const SERVER_LIMITS = {
  headersTimeoutMs: 20_000,
  requestTimeoutMs: 60_000,
  keepAliveTimeoutMs: 5_000,
  maxConnections: 512,
};

function limitConnections(server: Server): void {
  server.headersTimeout = SERVER_LIMITS.headersTimeoutMs;
  server.requestTimeout = SERVER_LIMITS.requestTimeoutMs;
  server.keepAliveTimeout = SERVER_LIMITS.keepAliveTimeoutMs;
  server.maxConnections = SERVER_LIMITS.maxConnections;
}

export function startFunction(env: NodeJS.ProcessEnv = process.env) {
  const config = readConfig(env);
  const logger = pino({ level: config.logLevel, base: { component: 'clone-function' } });
  const metrics = createFunctionMetrics();
  const fetch = registryFetch(config);
  const engine = createEngine({
    config,
    fetch,
    runtime: { sizedBody: (stream) => stream },
    logger,
    observer: metrics.observer,
    userAgent: 'image-clone-controller',
  });
  const jobs = config.callbackSecret
    ? new InProcessJobs({
        engine,
        fetch,
        secret: config.callbackSecret,
        deadlineMs: config.callbackDeadlineSeconds * 1000,
        policy: DEFAULT_RETRY_POLICY,
        logger,
        onFailure: metrics.jobFailed,
      })
    : undefined;
  const app = createApp({
    authToken: config.authToken,
    engine,
    logger,
    maxImagesPerRequest: config.maxImagesPerRequest,
    callbackOrigins: config.callbackOrigins,
    ...(jobs && { jobs }),
    extend: (routes) => {
      routes.get('/metrics', async (c) =>
        c.body(await metrics.registry.metrics(), 200, { 'content-type': metrics.registry.contentType }),
      );
    },
  });
  const server = serve({ fetch: app.fetch, port: config.port, hostname: env.HOST ?? '0.0.0.0' }, (info) => {
    logger.info(
      { port: info.port, version: VERSION, backupRegistry: config.backup.registry, backupNamespace: config.backup.namespace },
      'clone function listening',
    );
  });
  limitConnections(server as Server);
  // A bug in one job must not end every copy and callback in flight: logged and counted instead.
  process.on('unhandledRejection', (reason) => {
    logger.error({ error: describeError(reason) }, 'unhandled rejection');
    metrics.unhandledRejection();
  });

  const shutdown = async (signal: string) => {
    logger.info({ signal, jobs: jobs?.running.size ?? 0 }, 'shutting down');
    // No new requests; those in flight (synchronous copies, NDJSON streams) and callback jobs
    // finish, unless the platform's grace period ends first.
    const requestsDone = new Promise<void>((resolve) => server.close(() => resolve()));
    await Promise.allSettled([requestsDone, ...(jobs?.running ?? [])]);
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
