// The bridge's Prometheus metrics (GET /metrics), all named image_clone_bridge_*: the work queue,
// reconciles and patches, requests to the clone function and the results they bring, callbacks
// refused, watches, leadership, Events dropped, the release it runs, and the process (CPU, memory,
// event loop, GC).
// Names and labels are what dashboards scrape: a rename is a breaking change.

import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { VERSION } from './version.ts';

const PREFIX = 'image_clone_bridge';

/** The work queue's sizes, read when /metrics is scraped. */
export interface QueueState {
  readonly depth: number;
  readonly delayed: number;
  readonly processing: number;
}

export interface BridgeMetricsOptions {
  /** The work queue while there is one (this replica leads); without a queue the gauges read 0. */
  readonly queue?: () => QueueState | undefined;
}

const NO_QUEUE: QueueState = { depth: 0, delayed: 0, processing: 0 };

let processMetrics: Registry | undefined;

/**
 * The process's own metrics, once per process: they observe the process (GC, event loop), not a
 * bridge, and each collection would hook into the runtime again.
 */
function processRegistry(): Registry {
  if (processMetrics === undefined) {
    processMetrics = new Registry();
    collectDefaultMetrics({ register: processMetrics, prefix: `${PREFIX}_` });
  }
  return processMetrics;
}

/** The bridge's metrics, created once per bridge (or per test). */
export function bridgeMetrics(options: BridgeMetricsOptions = {}) {
  const own = new Registry();
  const registers = [own];
  const counter = <Label extends string>(name: string, help: string, labelNames: readonly Label[] = []) =>
    new Counter<Label>({ name: `${PREFIX}_${name}`, help, labelNames, registers });
  const gauge = <Label extends string>(name: string, help: string, labelNames: readonly Label[] = []) =>
    new Gauge<Label>({ name: `${PREFIX}_${name}`, help, labelNames, registers });
  const histogram = <Label extends string>(name: string, help: string, labelNames: readonly Label[], buckets?: number[]) =>
    new Histogram<Label>({ name: `${PREFIX}_${name}`, help, labelNames, registers, ...(buckets && { buckets }) });
  const queueGauge = (name: string, help: string, read: (queue: QueueState) => number) =>
    new Gauge({
      name: `${PREFIX}_${name}`,
      help,
      registers,
      collect() {
        if (options.queue !== undefined) this.set(read(options.queue() ?? NO_QUEUE));
      },
    });

  const metrics = {
    queueDepth: queueGauge('queue_depth', 'Workload keys waiting for a worker.', (queue) => queue.depth),
    queueDelayed: queueGauge('queue_delayed', 'Workload keys scheduled for a later retry or check.', (queue) => queue.delayed),
    queueProcessing: queueGauge('queue_processing', 'Workload keys being reconciled now.', (queue) => queue.processing),
    reconciles: counter('reconciles_total', 'Reconciliations by kind and result (done, requeue, error).', ['kind', 'result']),
    reconcileDuration: histogram(
      'reconcile_duration_seconds',
      'Time one reconciliation took, by kind (reading, deciding, requesting copies, patching).',
      ['kind'],
    ),
    patches: counter('patches_total', 'JSON Patches sent to workloads by kind and result (applied, conflict, gone, error).', [
      'kind',
      'result',
    ]),
    cloneRequests: counter('clone_requests_total', 'Requests to the clone function by result (accepted, failed).', ['result']),
    imageResults: counter(
      'image_results_total',
      'Image results from the clone function by status (copied, exists, failed, rejected).',
      ['status'],
    ),
    namespaceImageResults: counter(
      'namespace_image_results_total',
      'Image results by the namespace of the workloads that wanted the image, and status (copied, exists, failed, rejected); ' +
        'a result several namespaces wanted counts once in each.',
      ['namespace', 'status'],
    ),
    cloneLatency: histogram(
      'clone_latency_seconds',
      "Time from a clone request sent to its image's result arriving, by status (copied, exists, failed, rejected).",
      ['status'],
      [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800],
    ),
    callbackRejections: counter('callback_rejections_total', 'Callbacks or callback results refused, by reason.', ['reason']),
    watchRestarts: counter('watch_restarts_total', 'Watches restarted by the bridge, by kind and reason (error, silent).', [
      'kind',
      'reason',
    ]),
    informerSynced: gauge('informer_synced', '1 when the informer of a kind has listed and is watching.', ['kind']),
    leader: gauge('leader', '1 while this replica holds the leader lease.'),
    eventsDropped: counter(
      'events_dropped_total',
      'Kubernetes Events not written because too many were waiting for the API server (Normal ones first).',
    ),
    buildInfo: gauge('build_info', 'Always 1; the version label names the release this bridge runs.', ['version']),
  };
  metrics.buildInfo.set({ version: VERSION }, 1);
  return { registry: Registry.merge([own, processRegistry()]), ...metrics };
}

export type BridgeMetrics = ReturnType<typeof bridgeMetrics>;

/** The value of one series of a counter or gauge now (prom-client reads asynchronously); 0 if unset. */
export async function metricValue<Label extends string>(
  metric: Counter<Label> | Gauge<Label>,
  labels: Partial<Record<Label, string>> = {},
): Promise<number> {
  const wanted = Object.entries(labels);
  const { values } = await metric.get();
  const series = values.find((value) => {
    const found: Readonly<Record<string, string | number | undefined>> = value.labels;
    return Object.keys(found).length === wanted.length && wanted.every(([label, text]) => found[label] === text);
  });
  return series?.value ?? 0;
}
