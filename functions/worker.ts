// The clone function on Cloudflare Workers (`wrangler dev`, `wrangler deploy`). The same Hono app
// and engine as on Node; what differs lives here: configuration from bindings, FixedLengthStream
// for streamed uploads, JSON console logs, and callback jobs on a Queue, whose consumer may run for
// 15 minutes where waitUntil stops 30 s after the response.

import { createApp } from './app.ts';
import { loadConfig, type FunctionConfig } from './config.ts';
import { createEngine, type CloneEngine } from './engine.ts';
import { runCloneJob, type CloneJob } from './jobs.ts';
import { jobKey, openJob, sealJob, type JobKey, type QueuedJob } from './sealed-jobs.ts';
import type { Logger } from './log.ts';
import type { FetchLike } from './registry/http.ts';
import { DEFAULT_RETRY_POLICY } from './registry/retry.ts';
import { VERSION } from './version.ts';

// The few workerd types used here, declared rather than pulling @cloudflare/workers-types, whose
// globals clash with Node's.
declare class FixedLengthStream extends TransformStream<Uint8Array, Uint8Array> {
  constructor(length: number | bigint);
}
interface QueueBinding<T> {
  send(body: T): Promise<void>;
}
interface QueueMessage<T> {
  readonly body: T;
  readonly attempts: number;
  ack(): void;
  retry(options?: { delaySeconds?: number }): void;
}
interface MessageBatch<T> {
  readonly messages: readonly QueueMessage<T>[];
}

export interface WorkerEnv {
  readonly CLONE_JOBS?: QueueBinding<QueuedJob>;
  readonly [variable: string]: unknown;
}

/** A queue consumer may run 15 minutes; leave room for the copy before the callback gives up. */
const QUEUE_CALLBACK_DEADLINE_MS = 5 * 60 * 1000;

const logger: Logger = {
  info: (fields, msg) => console.log(JSON.stringify({ level: 'info', time: Date.now(), ...fields, msg })),
  warn: (fields, msg) => console.warn(JSON.stringify({ level: 'warn', time: Date.now(), ...fields, msg })),
  error: (fields, msg) => console.error(JSON.stringify({ level: 'error', time: Date.now(), ...fields, msg })),
  debug: () => {},
};

interface Instance {
  readonly config: FunctionConfig;
  readonly engine: CloneEngine;
  readonly app: ReturnType<typeof createApp>;
  /** Seals the credentials of queued jobs (derived from CALLBACK_SECRET). */
  readonly jobKey: Promise<JobKey> | undefined;
}

/** One engine per isolate and environment: token caches and known blobs survive between requests. */
const instances = new WeakMap<object, Instance>();

function instance(env: WorkerEnv): Instance {
  let existing = instances.get(env);
  if (existing) return existing;
  const variables = Object.fromEntries(
    Object.entries(env).filter((entry): entry is [string, string] => typeof entry[1] === 'string'),
  );
  const config = loadConfig(variables);
  const engine = createEngine({
    config,
    fetch: ((input, init) => fetch(input, init)) as FetchLike,
    // workerd sends a plain ReadableStream body chunked; FixedLengthStream keeps Content-Length.
    runtime: { sizedBody: (stream, size) => stream.pipeThrough(new FixedLengthStream(size)) },
    logger,
    userAgent: 'image-clone-controller (workers)',
    ...(config.ecr.region !== undefined && { ecrClientConfig: ecrClientConfig(variables) }),
  });
  const queue = env.CLONE_JOBS;
  const key = config.callbackSecret === undefined ? undefined : jobKey(config.callbackSecret);
  const app = createApp({
    authToken: config.authToken,
    engine,
    logger,
    maxImagesPerRequest: config.maxImagesPerRequest,
    callbackOrigins: config.callbackOrigins,
    ...(queue && key && { jobs: { submit: async (job: CloneJob) => queue.send(await sealJob(job, await key)) } }),
  });
  existing = { config, engine, app, jobKey: key };
  instances.set(env, existing);
  // Workers have no start and no /metrics: the version is told once per isolate, as it first serves.
  logger.info(
    { version: VERSION, backupRegistry: config.backup.registry, backupNamespace: config.backup.namespace },
    'clone function ready (workers)',
  );
  return existing;
}

/** Workers have no AWS credential chain: the keys come from secrets of the standard names. */
function ecrClientConfig(variables: Record<string, string>) {
  const { AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_ENDPOINT_URL_ECR } = variables;
  return {
    ...(AWS_ACCESS_KEY_ID &&
      AWS_SECRET_ACCESS_KEY && {
        credentials: {
          accessKeyId: AWS_ACCESS_KEY_ID,
          secretAccessKey: AWS_SECRET_ACCESS_KEY,
          ...(AWS_SESSION_TOKEN && { sessionToken: AWS_SESSION_TOKEN }),
        },
      }),
    ...(AWS_ENDPOINT_URL_ECR && { endpoint: AWS_ENDPOINT_URL_ECR }),
  };
}

function configurationError(error: unknown): Response {
  logger.error({ error: (error as Error).message }, 'configuration error');
  return Response.json({ error: (error as Error).message }, { status: 500 });
}

export default {
  async fetch(request: Request, env: WorkerEnv): Promise<Response> {
    let app: Instance['app'];
    try {
      app = instance(env).app;
    } catch (error) {
      return configurationError(error);
    }
    return app.fetch(request);
  },

  async queue(batch: MessageBatch<QueuedJob>, env: WorkerEnv): Promise<void> {
    const { config, engine, jobKey: key } = instance(env);
    for (const message of batch.messages) {
      let job: CloneJob;
      try {
        job = await openJob(message.body, await key!);
      } catch (error) {
        // Sealed under another CALLBACK_SECRET (rotated since): it can never be opened here.
        logger.error({ job: message.body.id, error: (error as Error).name }, 'queued job cannot be opened; dropped');
        message.ack();
        continue;
      }
      const delivered = await runCloneJob(job, {
        engine,
        fetch: (input, init) => fetch(input, init),
        secret: config.callbackSecret!,
        deadlineMs: Math.min(config.callbackDeadlineSeconds * 1000, QUEUE_CALLBACK_DEADLINE_MS),
        policy: DEFAULT_RETRY_POLICY,
        logger,
      });
      // Run the job again later (a repeat copy is a few HEADs) rather than lose its callback.
      if (delivered) message.ack();
      else message.retry({ delaySeconds: 60 });
    }
  },
};
