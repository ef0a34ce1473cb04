// Counts what the bridge reads of Secrets and ServiceAccounts, from the API server's own audit log:
// the policy records those two resources for the bridge's user only, so the count is the API
// server's, per object name, whatever the bridge believes it did.

import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

/** kube-apiserver flags for an audit log of `user`'s requests on Secrets and ServiceAccounts. */
export async function auditArgs(dir: string, user: string): Promise<{ args: string[]; logPath: string }> {
  const policyPath = join(dir, 'audit-policy.json');
  const logPath = join(dir, 'audit.log');
  const policy = {
    apiVersion: 'audit.k8s.io/v1',
    kind: 'Policy',
    omitStages: ['RequestReceived'],
    rules: [
      { level: 'Metadata', users: [user], resources: [{ group: '', resources: ['secrets', 'serviceaccounts'] }] },
      { level: 'None' },
    ],
  };
  await writeFile(policyPath, JSON.stringify(policy));
  return {
    args: [
      `--audit-policy-file=${policyPath}`,
      `--audit-log-path=${logPath}`,
      '--audit-log-format=json',
      '--audit-log-maxsize=0',
    ],
    logPath,
  };
}

export interface ReadCounts {
  /** Requests by "resource verb" ("secrets get": 48). */
  readonly byVerb: Record<string, number>;
  /** Per resource: requests, distinct objects, the most requests of one object, answers 404. */
  readonly byResource: Record<string, { requests: number; objects: number; maxPerObject: number; notFound: number }>;
}

interface AuditEvent {
  stage?: string;
  verb?: string;
  requestReceivedTimestamp?: string;
  objectRef?: { resource?: string; namespace?: string; name?: string };
  responseStatus?: { code?: number };
}

/** The counts between two wall-clock times (ms since the epoch), or over the whole log. */
export async function readCounts(logPath: string, from = 0, to = Number.POSITIVE_INFINITY): Promise<ReadCounts> {
  const byVerb: Record<string, number> = {};
  const perObject = new Map<string, Map<string, number>>();
  const notFound = new Map<string, number>();
  let text = '';
  try {
    text = await readFile(logPath, 'utf8');
  } catch {
    // no request matched: the API server never opened the log
  }
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const event = JSON.parse(line) as AuditEvent;
    if (event.stage !== 'ResponseComplete') continue;
    const at = Date.parse(event.requestReceivedTimestamp ?? '');
    if (at < from || at >= to) continue;
    const resource = event.objectRef?.resource ?? '?';
    byVerb[`${resource} ${event.verb}`] = (byVerb[`${resource} ${event.verb}`] ?? 0) + 1;
    const objects = perObject.get(resource) ?? new Map<string, number>();
    perObject.set(resource, objects);
    const name = `${event.objectRef?.namespace}/${event.objectRef?.name ?? '(collection)'}`;
    objects.set(name, (objects.get(name) ?? 0) + 1);
    if (event.responseStatus?.code === 404) notFound.set(resource, (notFound.get(resource) ?? 0) + 1);
  }
  const byResource = Object.fromEntries(
    [...perObject].map(([resource, objects]) => [
      resource,
      {
        requests: [...objects.values()].reduce((sum, count) => sum + count, 0),
        objects: objects.size,
        maxPerObject: Math.max(...objects.values()),
        notFound: notFound.get(resource) ?? 0,
      },
    ]),
  );
  return { byVerb, byResource };
}

/** "secrets: 48 (16 names, at most 3 each); serviceaccounts: …". */
export function formatCounts(counts: ReadCounts): string {
  const resources = ['secrets', 'serviceaccounts'];
  const parts = resources.map((resource) => {
    const count = counts.byResource[resource];
    if (count === undefined) return `${resource} 0`;
    const verbs = Object.entries(counts.byVerb)
      .filter(([key]) => key.startsWith(`${resource} `))
      .map(([key, value]) => `${key.slice(resource.length + 1)} ${value}`)
      .join(', ');
    return `${resource} ${count.requests} (${verbs}; ${count.objects} names, at most ${count.maxPerObject} each${count.notFound > 0 ? `, ${count.notFound} not found` : ''})`;
  });
  return parts.join('; ');
}
