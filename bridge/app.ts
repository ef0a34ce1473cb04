// The bridge assembled: HTTP server (probes, metrics, callback), clone client, result intake,
// events, and the controller, run by whichever replica holds the lease. main.ts runs this from the
// environment; tests run it in-process with their own configuration.

import { serve } from '@hono/node-server';
import type { KubeConfig } from '@kubernetes/client-node';
import type { AddressInfo } from 'node:net';
import { pino, type Logger } from 'pino';
import type { BridgeConfig } from './config.ts';
import { CloneClient } from './function/clone-client.ts';
import { ImageLedger, type ImageLedgerOptions } from './function/image-ledger.ts';
import { ResultIntake } from './function/intake.ts';
import { createHttpApp } from './http.ts';
import { loadKubeConfig, workloadApis, type WorkloadApi } from './kube/api.ts';
import { reuseConnections } from './kube/connections.ts';
import { EventRecorder } from './kube/events.ts';
import { LeaderElector, type LeaderElectionOptions } from './kube/leader-election.ts';
import { bridgeMetrics, type BridgeMetrics } from './metrics.ts';
import { Controller, type ControllerOptions } from './reconcile/controller.ts';
import { parseWorkloadKey, type WorkloadKind } from './workload.ts';

export interface BridgeOptions {
  readonly config: BridgeConfig;
  readonly logger?: Logger;
  readonly kubeConfig?: KubeConfig;
  /** Address to listen on; default all interfaces (in a pod, the Service reaches it). */
  readonly host?: string;
  readonly fetch?: typeof fetch;
  /** Wraps the workload API calls (tests interpose on them to stage races). */
  readonly workloadApis?: (apis: Record<WorkloadKind, WorkloadApi>) => Record<WorkloadKind, WorkloadApi>;
  /** Timings for tests; production uses the defaults. */
  readonly tuning?: {
    readonly informer?: ControllerOptions['informer'];
    readonly queue?: ControllerOptions['queue'];
    readonly ledger?: ImageLedgerOptions;
    readonly leaderElection?: Pick<LeaderElectionOptions, 'leaseDurationMs' | 'renewDeadlineMs' | 'retryPeriodMs'>;
  };
}

export interface Bridge {
  readonly port: number;
  readonly url: string;
  readonly metrics: BridgeMetrics;
  readonly ledger: ImageLedger;
  readonly cloneClient: CloneClient;
  /** The controller while this replica leads (always, without leader election). */
  controller(): Controller | undefined;
  leading(): boolean;
  stop(): Promise<void>;
}

export function createLogger(level: BridgeConfig['logLevel']): Logger {
  return pino({ level, base: { component: 'bridge' } });
}

export async function startBridge(options: BridgeOptions): Promise<Bridge> {
  const { config } = options;
  const logger = options.logger ?? createLogger(config.logLevel);
  // Every API call of the bridge (lists, watches, patches, events, the lease) on one pool.
  const kubeConfig = reuseConnections(options.kubeConfig ?? loadKubeConfig(config.kubeconfig));
  const apis = (options.workloadApis ?? ((real) => real))(workloadApis(kubeConfig));
  const metrics = bridgeMetrics();
  const ledger = new ImageLedger(options.tuning?.ledger);
  const identity = config.leaderElection.enabled ? config.leaderElection.identity : `bridge-${process.pid}`;
  const events = new EventRecorder({ kubeConfig, logger, instance: identity, onDropped: () => metrics.eventsDropped.inc() });
  let controller: Controller | undefined;

  const intake = new ResultIntake({
    backup: config.backup,
    ledger,
    metrics,
    logger,
    enqueue: (key) => controller?.enqueue(key),
    onFailure: (keys, source, error) => {
      for (const key of keys) {
        const ref = parseWorkloadKey(key);
        const workload = ref && controller?.informers[ref.kind].get(ref.namespace, ref.name);
        if (ref === undefined || workload === undefined) continue;
        events.record({ ...ref, uid: workload.metadata?.uid }, 'Warning', 'BackupFailed', `Backup of ${source} failed: ${error}`);
      }
    },
  });
  const cloneClient = new CloneClient({
    functionUrl: config.functionUrl,
    authToken: config.authToken,
    callbackUrl: config.callbackUrl,
    cloneTimeoutMs: config.cloneTimeoutSeconds * 1000,
    ledger,
    intake,
    metrics,
    logger,
    ...(options.fetch && { fetch: options.fetch }),
  });

  metrics.registry.onCollect(() => {
    metrics.queueDepth.set({}, controller?.queue.depth ?? 0);
    metrics.queueDelayed.set({}, controller?.queue.delayed ?? 0);
    metrics.queueProcessing.set({}, controller?.queue.processing ?? 0);
  });

  const app = createHttpApp({
    callbackSecret: config.callbackSecret,
    metrics,
    logger,
    // Ready only where callbacks can be applied: the Service then sends them to the leader.
    readiness: () =>
      controller === undefined
        ? { ready: false, reason: 'not the leader' }
        : controller.synced
          ? { ready: true }
          : { ready: false, reason: 'informers not synced' },
    intake: () => (controller === undefined ? undefined : intake),
  });
  const server = serve({ fetch: app.fetch, port: config.port, hostname: options.host ?? '0.0.0.0' });
  await new Promise<void>((resolve, reject) => {
    if (server.listening) return resolve();
    server.once('listening', resolve);
    server.once('error', reject);
  });
  const port = (server.address() as AddressInfo).port;
  logger.info(
    { port, mode: cloneClient.mode, backupRegistry: config.backup.registry, backupNamespace: config.backup.namespace },
    'bridge listening',
  );
  if (config.callbackUnused !== undefined) logger.info({ reason: config.callbackUnused }, 'CALLBACK_URL not used');

  const startController = () => {
    const started = new Controller({
      kubeConfig,
      apis,
      decision: { backup: config.backup, ignoredNamespaces: config.ignoredNamespaces },
      workers: config.workers,
      resyncMs: config.resyncSeconds * 1000,
      ledger,
      cloneClient,
      events,
      metrics,
      logger,
      ...(options.tuning?.informer && { informer: options.tuning.informer }),
      ...(options.tuning?.queue && { queue: options.tuning.queue }),
    });
    controller = started;
    metrics.leader.set({}, 1);
    // Not awaited: a leader keeps renewing its lease while the informers list.
    void started.start();
  };
  const stopController = async () => {
    const stopping = controller;
    controller = undefined;
    metrics.leader.set({}, 0);
    await stopping?.stop();
  };

  let elector: LeaderElector | undefined;
  if (config.leaderElection.enabled) {
    elector = new LeaderElector({
      kubeConfig,
      namespace: config.leaderElection.namespace,
      name: config.leaderElection.leaseName,
      identity,
      logger,
      ...options.tuning?.leaderElection,
      onStartedLeading: startController,
      onStoppedLeading: stopController,
    });
    elector.start();
  } else {
    startController();
  }

  return {
    port,
    url: `http://127.0.0.1:${port}`,
    metrics,
    ledger,
    cloneClient,
    controller: () => controller,
    leading: () => controller !== undefined,
    stop: async () => {
      if (elector !== undefined) await elector.stop();
      else await stopController();
      await events.flush();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      logger.info('bridge stopped');
    },
  };
}
