// A TCP proxy that makes a loopback registry answer as if it were a network away: every chunk is
// held `delayMs` in each direction (a round trip costs 2 × delayMs), and a new connection first
// pays a TCP handshake (one round trip) before its first bytes go through. No TLS handshake is
// charged, which favours tools that open many connections. The bench uses it with --latency-ms.

import { createServer, connect, type Server, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { listenOnLoopback } from '../testbed/ports.ts';

export interface LatencyProxy {
  /** host:port to give the tools instead of the registry's. */
  readonly host: string;
  stop(): Promise<void>;
}

export async function startLatencyProxy(upstreamHost: string, delayMs: number): Promise<LatencyProxy> {
  const [upstreamAddress, upstreamPort] = splitHost(upstreamHost);
  const sockets = new Set<Socket>();
  // Half-open both ways: a side that has finished sending may still have answers on their way to it.
  const server: Server = createServer({ allowHalfOpen: true }, (client) => {
    const upstream = connect({ port: upstreamPort, host: upstreamAddress, allowHalfOpen: true });
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.setNoDelay(true);
      socket.on('error', () => {}); // the other side's close follows
      socket.on('close', () => {
        sockets.delete(socket);
        client.destroy();
        upstream.destroy();
      });
    }
    const handshakeDone = performance.now() + 2 * delayMs;
    relay(client, upstream, delayMs, handshakeDone);
    relay(upstream, client, delayMs, 0);
  });
  return {
    host: `127.0.0.1:${await listenOnLoopback(server)}`,
    async stop() {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** Forwards `from` → `to`, each chunk (and the end) `delayMs` later, in order, never before `notBefore`. */
function relay(from: Socket, to: Socket, delayMs: number, notBefore: number): void {
  const queue: Array<{ due: number; chunk: Buffer | null }> = [];
  let timer: NodeJS.Timeout | undefined;
  const deliver = () => {
    timer = undefined;
    const now = performance.now();
    while (queue.length > 0 && queue[0]!.due <= now) {
      const { chunk } = queue.shift()!;
      if (to.destroyed) return;
      if (chunk === null) to.end();
      else to.write(chunk);
    }
    if (queue.length > 0) timer = setTimeout(deliver, queue[0]!.due - now);
  };
  const enqueue = (chunk: Buffer | null) => {
    queue.push({ due: Math.max(performance.now(), notBefore) + delayMs, chunk });
    timer ??= setTimeout(deliver, queue[0]!.due - performance.now());
  };
  from.on('data', (chunk: Buffer) => enqueue(chunk));
  from.on('end', () => enqueue(null));
}

function splitHost(host: string): [string, number] {
  const colon = host.lastIndexOf(':');
  return [host.slice(0, colon), Number(host.slice(colon + 1))];
}
