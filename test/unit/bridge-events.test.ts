import { KubeConfig } from '@kubernetes/client-node';
import { once } from 'node:events';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { isStale, KubeApiError, kubeJson, statusCode } from '../../bridge/kube/api.ts';
import { EventRecorder, type EventRecorderOptions } from '../../bridge/kube/events.ts';
import { describeError } from '../../lib/errors.ts';

/** A stand-in API server for events that answers only when told to, so writes can be held open. */
async function eventsServer() {
  const held: { request: IncomingMessage; body: Record<string, unknown>; response: ServerResponse }[] = [];
  let open = 0;
  let maxOpen = 0;
  const server = createServer((request, response) => {
    let text = '';
    request.on('data', (chunk: Buffer) => (text += chunk.toString()));
    request.on('end', () => {
      open++;
      maxOpen = Math.max(maxOpen, open);
      held.push({ request, body: JSON.parse(text) as Record<string, unknown>, response });
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const kubeConfig = new KubeConfig();
  // client-node refuses a plain-http server unless TLS verification is (meaninglessly) off.
  kubeConfig.loadFromOptions({
    clusters: [{ name: 'c', server: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, skipTLSVerify: true }],
    users: [{ name: 'u', token: 'not-a-secret' }],
    contexts: [{ name: 'x', cluster: 'c', user: 'u' }],
    currentContext: 'x',
  });
  return {
    kubeConfig,
    held,
    get maxOpen() {
      return maxOpen;
    },
    /** Answers every held write `status` (201) with `body` (its own). */
    answerAll(status = 201, body?: object) {
      for (const write of held.splice(0)) {
        open--;
        write.response.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body ?? write.body));
      }
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** A recorder writing to `server`, silent, as replica bridge-0. */
function recorderFor(
  server: { kubeConfig: KubeConfig },
  options: Partial<Omit<EventRecorderOptions, 'kubeConfig' | 'logger' | 'instance'>> = {},
): EventRecorder {
  return new EventRecorder({
    kubeConfig: server.kubeConfig,
    logger: pino({ level: 'silent' }),
    instance: 'bridge-0',
    ...options,
  });
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
/** Waits (up to 5 s) for the writes in flight to reach the server. */
async function until(condition: () => boolean): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (!condition() && Date.now() < deadline) await sleep(10);
  await sleep(20); // and a moment more, so that a write beyond the bound would show
}
const servers: Awaited<ReturnType<typeof eventsServer>>[] = [];
afterEach(async () => {
  for (const server of servers.splice(0)) {
    server.answerAll();
    await server.close();
  }
});

describe('EventRecorder', () => {
  it('writes a few events at a time, queues a bounded number and drops the rest', async () => {
    const server = await eventsServer();
    servers.push(server);
    const recorder = recorderFor(server, {
      maxConcurrentWrites: 2,
      maxQueued: 3,
    });
    for (let index = 0; index < 8; index++) {
      recorder.record({ kind: 'Deployment', namespace: 'shop', name: `web-${index}` }, 'Normal', 'BackedUp', 'images backed up');
    }
    await until(() => server.held.length >= 2);
    expect(server.held.map((write) => (write.body.involvedObject as { name: string }).name)).toEqual(['web-0', 'web-1']);
    expect(recorder.dropped).toBe(3);
    for (let answered = 0; answered < 5; answered += 2) {
      await until(() => server.held.length >= Math.min(2, 5 - answered));
      server.answerAll();
    }
    await recorder.flush();
    expect(server.maxOpen).toBe(2);
    expect(recorder.dropped).toBe(3);
  });

  it('keeps a Warning when the queue is full, in place of the oldest waiting Normal event', async () => {
    const server = await eventsServer();
    servers.push(server);
    let dropped = 0;
    const recorder = recorderFor(server, {
      maxConcurrentWrites: 1,
      maxQueued: 2,
      onDropped: () => dropped++,
    });
    const on = (name: string) => ({ kind: 'Deployment' as const, namespace: 'shop', name });
    recorder.record(on('n1'), 'Normal', 'BackedUp', 'ok'); // written at once
    recorder.record(on('n2'), 'Normal', 'BackedUp', 'ok'); // waits
    recorder.record(on('n3'), 'Normal', 'BackedUp', 'ok'); // waits: the queue is full
    recorder.record(on('w1'), 'Warning', 'BackupFailed', 'no'); // takes n2's place
    recorder.record(on('n4'), 'Normal', 'BackedUp', 'ok'); // dropped
    const written: string[] = [];
    for (let expected = 1; expected <= 3; expected++) {
      await until(() => server.held.length >= 1);
      written.push(...server.held.map((write) => (write.body.involvedObject as { name: string }).name));
      server.answerAll();
    }
    await recorder.flush();
    expect(written).toEqual(['n1', 'n3', 'w1']);
    expect(recorder.dropped).toBe(2);
    expect(dropped).toBe(2);
  });

  it('counts a repeat on the existing Event instead of creating another', async () => {
    const server = await eventsServer();
    servers.push(server);
    const recorder = recorderFor(server);
    const object = { kind: 'DaemonSet' as const, namespace: 'ops', name: 'agent', uid: 'u-1' };
    recorder.record(object, 'Warning', 'BackupFailed', 'registry unreachable');
    await until(() => server.held.length === 1);
    server.answerAll();
    await recorder.flush();
    recorder.record(object, 'Warning', 'BackupFailed', 'registry unreachable');
    await until(() => server.held.length === 1);
    const [repeat] = server.held;
    expect(repeat?.request.method).toBe('PATCH');
    expect(repeat?.request.headers['content-type']).toBe('application/merge-patch+json');
    expect(repeat?.body).toMatchObject({ count: 2 });
    expect(repeat?.request.url).toMatch(/^\/api\/v1\/namespaces\/ops\/events\/agent\.[0-9a-f]{16}$/);
  });
});

describe('kubeJson', () => {
  it('refuses with an error that says the status and the Status message, nothing more', async () => {
    const server = await eventsServer();
    servers.push(server);
    const call = kubeJson(server.kubeConfig, {
      method: 'PATCH',
      path: '/apis/apps/v1/namespaces/default/deployments/web',
      body: [{ op: 'test', path: '/spec/replicas', value: 1 }],
      contentType: 'application/json-patch+json',
      timeoutMs: 5_000,
    });
    await until(() => server.held.length === 1);
    server.answerAll(422, { kind: 'Status', status: 'Failure', message: 'the server rejected our request', code: 422 });
    const error: unknown = await call.catch((refusal: unknown) => refusal);
    expect(error).toBeInstanceOf(KubeApiError);
    expect(describeError(error)).toBe('HTTP 422: the server rejected our request');
    expect(statusCode(error)).toBe(422);
    expect(isStale(error)).toBe(true);
  });
});
