// Prometheus metrics of the clone function on Node (GET /metrics), fed by the engine's observer.

import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { CloneResult } from './contract/index.ts';
import type { EngineObserver } from './engine.ts';
import { VERSION } from './version.ts';

export interface FunctionMetrics {
  readonly registry: Registry;
  readonly observer: EngineObserver;
  /** A callback job that failed other than by its callback's refusal. */
  readonly jobFailed: () => void;
  /** A promise rejection nobody handled: a bug, logged and counted instead of ending the process. */
  readonly unhandledRejection: () => void;
}

export function createFunctionMetrics(): FunctionMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'image_clone_function_' });
  const clones = new Counter({
    name: 'image_clone_clones_total',
    help: 'Images processed, by result status (copied, exists, failed).',
    labelNames: ['status'] as const,
    registers: [registry],
  });
  const bytes = new Counter({
    name: 'image_clone_bytes_copied_total',
    help: 'Blob bytes uploaded to the backup registry.',
    registers: [registry],
  });
  const duration = new Histogram({
    name: 'image_clone_copy_duration_seconds',
    help: 'Time to back up one image, by result status.',
    labelNames: ['status'] as const,
    buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900],
    registers: [registry],
  });
  const inFlight = new Gauge({ name: 'image_clone_copies_in_flight', help: 'Image copies running now.', registers: [registry] });
  const retries = new Counter({
    name: 'image_clone_registry_retries_total',
    help: 'Registry requests and blob transfers retried.',
    registers: [registry],
  });
  const jobFailures = new Counter({
    name: 'image_clone_job_failures_total',
    help: 'Callback jobs that failed before delivering their callback (a bug; see the log).',
    registers: [registry],
  });
  const unhandled = new Counter({
    name: 'image_clone_unhandled_rejections_total',
    help: 'Promise rejections nobody handled, logged instead of ending the process (a bug; see the log).',
    registers: [registry],
  });
  for (const status of ['copied', 'exists', 'failed']) {
    clones.inc({ status }, 0);
  }
  new Gauge({
    name: 'image_clone_function_build_info',
    help: 'Always 1; the version label names the release this function runs.',
    labelNames: ['version'] as const,
    registers: [registry],
  }).set({ version: VERSION }, 1);

  return {
    registry,
    observer: {
      cloneStarted: () => inFlight.inc(),
      cloneFinished: (result: CloneResult) => {
        inFlight.dec();
        clones.inc({ status: result.status });
        duration.observe({ status: result.status }, (result.ms ?? 0) / 1000);
        if (result.bytes) bytes.inc(result.bytes);
      },
      retried: () => retries.inc(),
    },
    jobFailed: () => jobFailures.inc(),
    unhandledRejection: () => unhandled.inc(),
  };
}
