// The bridge assembled: HTTP server (probes, metrics, callback), clone client, result intake,
// events, and the controller, run by whichever replica holds the lease. main.ts runs this from the
// environment; tests run it in-process with their own configuration. Each part gets only the
// narrow view of the others it needs; the controller, which exists only while this replica
// leads, is reached through the closures below. Every replica is ready; the leader labels its
// own Pod so that the Service sends callbacks to it (kube/leader-label.ts).

import { serve } from '@hono/node-server';
import type { KubeConfig } from '@kubernetes/client-node';
import type { Hono } from 'hono';
import type { AddressInfo } from 'node:net';
import { pino, type Logger } from 'pino';
import type { BridgeConfig } from './config.ts';
import { CloneClient } from './function/clone-client.ts';
import { ImageLedger, type ImageLedgerOptions } from './function/image-ledger.ts';
import { ResultIntake } from './function/intake.ts';
import { createHttpApp, type Readiness } from './http.ts';
import { loadKubeConfig, workloadApis, type WorkloadApis } from './kube/api.ts';
import { reuseConnections } from './kube/connections.ts';
import { EventRecorder } from './kube/events.ts';
import { namespaceCollection } from './kube/namespaces.ts';
import { PullSecrets } from './kube/pull-secrets.ts';
import { LeaderElector, type LeaderElectionOptions } from './kube/leader-election.ts';
import { LeaderLabel } from './kube/leader-label.ts';
import { bridgeMetrics, type BridgeMetrics } from './metrics.ts';
import { Controller, type ControllerOptions } from './reconcile/controller.ts';
import { VERSION } from './version.ts';

export interface BridgeOptions {
  readonly config: BridgeConfig;
  readonly logger?: Logger;
  readonly kubeConfig?: KubeConfig;
  /** Address to listen on; default all interfaces (in a pod, the Service reaches it). */
  readonly host?: string;
  /** This replica's Pod, which carries the leader label while it leads; none: no label (outside a cluster). */
  readonly pod?: { readonly namespace: string; readonly name: string };
  readonly fetch?: typeof fetch;
  /** Wraps the workload API calls (tests interpose on them to stage races). */
  readonly workloadApis?: (apis: WorkloadApis) => WorkloadApis;
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
  const apis = (options.workloadApis ?? ((real) => real))(workloadApis(kubeConfig, config.watchKinds));
  const identity = config.leaderElection.enabled ? config.leaderElection.identity : `bridge-${process.pid}`;
  let controller: Controller | undefined;

  const metrics = bridgeMetrics({ queue: () => controller?.queue });
  const ledger = new ImageLedger(options.tuning?.ledger);
  // Kept across terms of leadership: a Secret read a minute ago is still good.
  const pullSecrets = new PullSecrets({
    kubeConfig,
    onError: (what, error) => logger.warn({ what, error }, 'pull secret not readable; copying without it'),
  });
  const events = new EventRecorder({ kubeConfig, logger, instance: identity, onDropped: () => metrics.eventsDropped.inc() });
  const intake = new ResultIntake({
    backup: config.backup,
    ledger,
    metrics,
    logger,
    events,
    workloads: { get: (kind, namespace, name) => controller?.get(kind, namespace, name) },
    enqueue: (key) => controller?.enqueue(key),
  });
  const leaderLabel =
    options.pod === undefined
      ? undefined
      : new LeaderLabel({ kubeConfig, namespace: options.pod.namespace, pod: options.pod.name, logger });
  // A container restarted in the same Pod finds the label its predecessor may have left.
  leaderLabel?.set(false);
  const cloneClient = new CloneClient({
    functionUrl: config.functionUrl,
    authToken: config.authToken,
    callbackUrl: config.callbackUrl,
    cloneTimeoutMs: config.cloneTimeoutSeconds * 1000,
    maxImagesPerRequest: config.maxImagesPerRequest,
    ledger,
    intake,
    metrics,
    logger,
    ...(options.fetch && { fetch: options.fetch }),
  });

  const app = createHttpApp({
    callbackSecret: config.callbackSecret,
    metrics,
    logger,
    readiness: () => readinessOf(controller),
    intake: () => (controller === undefined ? undefined : intake),
  });
  const server = await listen(app, config.port, options.host ?? '0.0.0.0');
  const port = (server.address() as AddressInfo).port;
  logger.info(
    {
      port,
      version: VERSION,
      mode: cloneClient.mode,
      backupRegistry: config.backup.registry,
      backupNamespace: config.backup.namespace,
    },
    'bridge listening',
  );
  if (config.callbackUnused !== undefined) logger.info({ reason: config.callbackUnused }, 'CALLBACK_URL not used');
  if (config.credentialsWithheld !== undefined) {
    logger.warn({ reason: config.credentialsWithheld }, "workloads' pull-secret credentials are not sent to the function");
  }

  const startLeading = () => {
    controller = new Controller({
      kubeConfig,
      apis,
      namespaces: namespaceCollection(kubeConfig),
      pullSecrets,
      ...(config.credentialsWithheld !== undefined && { credentialsWithheld: config.credentialsWithheld }),
      decision: { backup: config.backup, ignoredNamespaces: config.ignoredNamespaces, defaultMode: config.defaultMode },
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
    metrics.leader.set({}, 1);
    leaderLabel?.set(true);
    // Not awaited: a leader keeps renewing its lease while the informers list.
    void controller.start();
  };
  const stopLeading = async () => {
    leaderLabel?.set(false);
    const stopping = controller;
    controller = undefined;
    metrics.leader.set({}, 0);
    await stopping?.stop();
    // Off the Service before the lease can go to another replica; bounded, so that an API server
    // out of reach does not hold up the handover (the label then comes off once it answers).
    await leaderLabel?.settled(5_000);
  };

  const elector = config.leaderElection.enabled
    ? new LeaderElector({
        kubeConfig,
        namespace: config.leaderElection.namespace,
        name: config.leaderElection.leaseName,
        identity,
        logger,
        ...options.tuning?.leaderElection,
        onStartedLeading: startLeading,
        onStoppedLeading: stopLeading,
      })
    : undefined;
  if (elector !== undefined) elector.start();
  else startLeading();

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
      else await stopLeading();
      await events.flush();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      logger.info('bridge stopped');
    },
  };
}

/**
 * A standby is ready: it is a healthy replica (rolling updates surge, a PodDisruptionBudget counts
 * it) and the Service does not select it anyway, for want of the leader label. The leader is ready
 * once its informers have synced.
 */
function readinessOf(controller: Controller | undefined): Readiness {
  if (controller === undefined) return { ready: true };
  return controller.synced ? { ready: true } : { ready: false, reason: 'informers not synced' };
}

async function listen(app: Hono, port: number, hostname: string): Promise<ReturnType<typeof serve>> {
  const server = serve({ fetch: app.fetch, port, hostname });
  await new Promise<void>((resolve, reject) => {
    if (server.listening) return resolve();
    server.once('listening', resolve);
    server.once('error', reject);
  });
  return server;
}
