// Counts what a copier asked of a registry, from the registry's own log: distribution logs one
// "response completed" line per request with its method and the client's address, so the number
// of requests per method and of distinct client ports (TCP connections) can be read back.

import type { Registry } from '../testbed/registry.ts';

export interface RequestCounts {
  requests: number;
  byMethod: Record<string, number>;
  /** Distinct client ports: TCP connections opened for these requests. */
  connections: number;
}

const COMPLETED =
  /msg="response completed(?: with error)?".*?http\.request\.method=(\w+).*?http\.request\.remoteaddr="?([^"\s]+)/;

export function countRequests(log: string): RequestCounts {
  const byMethod: Record<string, number> = {};
  const clients = new Set<string>();
  let requests = 0;
  for (const line of log.split('\n')) {
    const match = COMPLETED.exec(line);
    if (!match) continue;
    requests++;
    byMethod[match[1]!] = (byMethod[match[1]!] ?? 0) + 1;
    clients.add(match[2]!);
  }
  return { requests, byMethod, connections: clients.size };
}

/**
 * Marks a point in a long-lived registry's log (its log keeps only the last few MiB, so offsets
 * do not survive); `since()` counts the requests logged after the mark, the mark excluded.
 */
export async function markLog(registry: Registry): Promise<{ since(): RequestCounts }> {
  const name = `bench-mark-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
  const response = await fetch(`${registry.url}/v2/${name}/tags/list`);
  await response.arrayBuffer();
  // The registry writes its log line after answering: wait until it is there.
  const needle = `/v2/${name}/tags/list`;
  for (let i = 0; i < 100 && !registry.logs().includes(needle); i++) await new Promise((r) => setTimeout(r, 10));
  return {
    since() {
      const log = registry.logs();
      const at = log.indexOf(needle);
      if (at < 0) throw new Error('the log mark is gone: the registry log was trimmed during one run');
      const lineEnd = log.indexOf('\n', at);
      return countRequests(lineEnd < 0 ? '' : log.slice(lineEnd + 1));
    },
  };
}

/** Waits until the registry has logged every request (lines trail answers by a little). */
export async function settleLog(registry: Registry): Promise<void> {
  let length = -1;
  while (registry.logs().length !== length) {
    length = registry.logs().length;
    await new Promise((r) => setTimeout(r, 30));
  }
}

export function formatCounts(counts: RequestCounts): string {
  const order = ['HEAD', 'GET', 'POST', 'PATCH', 'PUT', 'DELETE'];
  const methods = Object.keys(counts.byMethod).sort((a, b) => order.indexOf(a) - order.indexOf(b));
  return `${counts.requests} (${methods.map((m) => `${m} ${counts.byMethod[m]}`).join(', ')}; ${counts.connections} conn)`;
}
