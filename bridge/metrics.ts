// Prometheus text exposition (format 0.0.4) for a handful of counters and gauges. Small enough to
// own: the bridge needs no histograms, summaries or default process metrics that would justify a
// dependency.

type Labels = Readonly<Record<string, string>>;

abstract class Metric {
  readonly name: string;
  readonly help: string;
  readonly labelNames: readonly string[];
  protected readonly values = new Map<string, { labels: Labels; value: number }>();

  constructor(name: string, help: string, labelNames: readonly string[]) {
    if (!/^[a-zA-Z_:][a-zA-Z0-9_:]*$/.test(name)) throw new Error(`invalid metric name ${name}`);
    this.name = name;
    this.help = help;
    this.labelNames = labelNames;
  }

  abstract readonly type: 'counter' | 'gauge';

  protected slot(labels: Labels): { labels: Labels; value: number } {
    for (const label of Object.keys(labels)) {
      if (!this.labelNames.includes(label)) throw new Error(`metric ${this.name} has no label ${label}`);
    }
    const ordered = Object.fromEntries(this.labelNames.map((label) => [label, labels[label] ?? '']));
    const id = JSON.stringify(ordered);
    let slot = this.values.get(id);
    if (slot === undefined) {
      slot = { labels: ordered, value: 0 };
      this.values.set(id, slot);
    }
    return slot;
  }

  get(labels: Labels = {}): number {
    return this.slot(labels).value;
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${escapeHelp(this.help)}`, `# TYPE ${this.name} ${this.type}`];
    for (const { labels, value } of this.values.values()) {
      const pairs = Object.entries(labels).map(([label, text]) => `${label}="${escapeLabel(text)}"`);
      lines.push(`${this.name}${pairs.length > 0 ? `{${pairs.join(',')}}` : ''} ${formatValue(value)}`);
    }
    return lines.join('\n');
  }
}

export class Counter extends Metric {
  readonly type = 'counter' as const;

  inc(labels: Labels = {}, by = 1): void {
    if (by < 0) throw new Error('a counter only goes up');
    this.slot(labels).value += by;
  }
}

export class Gauge extends Metric {
  readonly type = 'gauge' as const;

  set(labels: Labels, value: number): void {
    this.slot(labels).value = value;
  }
}

export class MetricsRegistry {
  readonly #metrics: Metric[] = [];
  readonly #collectors: (() => void)[] = [];

  counter(name: string, help: string, labelNames: readonly string[] = []): Counter {
    return this.#add(new Counter(name, help, labelNames));
  }

  gauge(name: string, help: string, labelNames: readonly string[] = []): Gauge {
    return this.#add(new Gauge(name, help, labelNames));
  }

  /** Runs before each render: gauges that mirror live state (queue depth) are read then. */
  onCollect(collect: () => void): void {
    this.#collectors.push(collect);
  }

  render(): string {
    for (const collect of this.#collectors) collect();
    return `${this.#metrics.map((metric) => metric.render()).join('\n')}\n`;
  }

  #add<M extends Metric>(metric: M): M {
    if (this.#metrics.some((existing) => existing.name === metric.name)) throw new Error(`duplicate metric ${metric.name}`);
    this.#metrics.push(metric);
    return metric;
  }
}

function escapeHelp(text: string): string {
  return text.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}

function escapeLabel(text: string): string {
  return text.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

function formatValue(value: number): string {
  if (Number.isNaN(value)) return 'NaN';
  if (value === Infinity) return '+Inf';
  if (value === -Infinity) return '-Inf';
  return String(value);
}

/** The bridge's metrics, created once per process (or per test). */
export function bridgeMetrics(registry = new MetricsRegistry()) {
  const prefix = 'image_clone_bridge';
  return {
    registry,
    queueDepth: registry.gauge(`${prefix}_queue_depth`, 'Workload keys waiting for a worker.'),
    queueDelayed: registry.gauge(`${prefix}_queue_delayed`, 'Workload keys scheduled for a later retry or check.'),
    queueProcessing: registry.gauge(`${prefix}_queue_processing`, 'Workload keys being reconciled now.'),
    reconciles: registry.counter(`${prefix}_reconciles_total`, 'Reconciliations by kind and result (done, requeue, error).', [
      'kind',
      'result',
    ]),
    patches: registry.counter(
      `${prefix}_patches_total`,
      'JSON Patches sent to workloads by kind and result (applied, conflict, gone, error).',
      ['kind', 'result'],
    ),
    cloneRequests: registry.counter(
      `${prefix}_clone_requests_total`,
      'Requests to the clone function by result (accepted, failed).',
      ['result'],
    ),
    imageResults: registry.counter(
      `${prefix}_image_results_total`,
      'Image results from the clone function by status (copied, exists, failed, rejected).',
      ['status'],
    ),
    callbackRejections: registry.counter(
      `${prefix}_callback_rejections_total`,
      'Callbacks or callback results refused, by reason.',
      ['reason'],
    ),
    watchRestarts: registry.counter(
      `${prefix}_watch_restarts_total`,
      'Watches restarted by the bridge, by kind and reason (error, silent).',
      ['kind', 'reason'],
    ),
    informerSynced: registry.gauge(`${prefix}_informer_synced`, '1 when the informer of a kind has listed and is watching.', [
      'kind',
    ]),
    leader: registry.gauge(`${prefix}_leader`, '1 while this replica holds the leader lease.'),
    eventsDropped: registry.counter(
      `${prefix}_events_dropped_total`,
      'Kubernetes Events not written because too many were waiting for the API server (Normal ones first).',
    ),
  };
}

export type BridgeMetrics = ReturnType<typeof bridgeMetrics>;
