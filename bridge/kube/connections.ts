// One connection pool for every call the bridge makes to the API server. client-node 2.0.x builds
// a new undici Agent for each request (KubeConfig.applySecurityAuthentication → createDispatcher),
// so every list, patch, event and watch opens its own TLS connection and leaves it open until it
// idles out: at a few hundred calls per second that is a TLS handshake per call on both sides
// and thousands of sockets held (docs/scale.md). Here the dispatcher
// client-node creates for a request is kept and handed to the requests that follow, and replaced
// by a fresh one now and then, so that a rotated CA or client certificate (files client-node
// reads again for each request) still takes effect; the replaced one closes once its requests,
// a watch included, have ended (a minute after the switch, so that none is caught in between).

import type { KubeConfig } from '@kubernetes/client-node';

interface Closable {
  close?: () => Promise<void>;
}

export interface ConnectionReuseOptions {
  /** How long one dispatcher serves before the next freshly configured one replaces it. */
  readonly refreshMs?: number;
  readonly now?: () => number;
}

const reused = new WeakSet<KubeConfig>();
const CLOSE_DELAY_MS = 60_000;

/** Makes `config` share one dispatcher across requests (idempotent); returns it for chaining. */
export function reuseConnections(config: KubeConfig, options: ConnectionReuseOptions = {}): KubeConfig {
  if (reused.has(config)) return config;
  reused.add(config);
  const refreshMs = options.refreshMs ?? 10 * 60_000;
  const now = options.now ?? Date.now;
  const apply = config.applySecurityAuthentication.bind(config);
  let shared: { dispatcher: unknown; since: number } | undefined;

  config.applySecurityAuthentication = async (context) => {
    await apply(context);
    const created = context.getDispatcher();
    // No TLS options (plain http): client-node leaves the dispatcher to undici's global pool.
    if (created === undefined) return;
    const at = now();
    if (shared === undefined || at - shared.since >= refreshMs) {
      const previous = shared?.dispatcher as Closable | undefined;
      shared = { dispatcher: created, since: at };
      // close() lets requests in flight (a watch) finish, then releases the sockets. Later, not
      // now: a request handed the previous dispatcher a moment ago may not have been sent yet.
      if (previous !== undefined) setTimeout(() => void previous.close?.().catch(() => {}), CLOSE_DELAY_MS).unref();
      return;
    }
    context.setDispatcher(shared.dispatcher as typeof created);
  };
  return config;
}
