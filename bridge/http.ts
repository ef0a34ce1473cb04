// The bridge's HTTP surface: probes, metrics, and the endpoint where the clone function posts
// results (function/callback.ts).

import { Hono } from 'hono';
import { callbackEndpoint, type CallbackEndpointOptions } from './function/callback.ts';
import type { BridgeMetrics } from './metrics.ts';

export interface Readiness {
  readonly ready: boolean;
  readonly reason?: string;
}

export interface HttpAppOptions extends CallbackEndpointOptions {
  readonly metrics: BridgeMetrics;
  readonly readiness: () => Readiness;
}

export function createHttpApp(options: HttpAppOptions): Hono {
  const { metrics, readiness } = options;
  const app = new Hono();

  app.get('/healthz', (c) => c.json({ status: 'ok' }));

  app.get('/readyz', (c) => {
    const state = readiness();
    return state.ready ? c.json({ status: 'ready' }) : c.json({ status: 'not ready', reason: state.reason }, 503);
  });

  app.get('/metrics', async (c) =>
    c.body(await metrics.registry.metrics(), 200, { 'content-type': metrics.registry.contentType }),
  );

  app.route('/', callbackEndpoint(options));
  return app;
}
