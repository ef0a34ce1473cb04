import { KubeConfig } from '@kubernetes/client-node';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { PullSecrets } from '../../bridge/kube/pull-secrets.ts';
import { crossesNetworkInPlainText } from '../../bridge/config.ts';

const b64 = (text: string) => Buffer.from(text).toString('base64');
const dockerConfig = (auths: Record<string, { username: string; password: string }>) => ({
  '.dockerconfigjson': b64(JSON.stringify({ auths })),
});

/** An API server that serves ServiceAccounts and Secrets from tables, and counts the reads. */
async function apiServer(objects: Record<string, unknown>) {
  const reads: string[] = [];
  const server: Server = createServer((request, response) => {
    reads.push(request.url ?? '');
    const object = objects[request.url ?? ''];
    if (object === 'error') return response.writeHead(500).end('{"message":"boom"}');
    if (object === undefined)
      return response.writeHead(404, { 'content-type': 'application/json' }).end('{"message":"not found"}');
    response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(object));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const config = new KubeConfig();
  config.loadFromOptions({
    clusters: [{ name: 'c', server: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, skipTLSVerify: true }],
    users: [{ name: 'u', token: 't' }],
    contexts: [{ name: 'x', cluster: 'c', user: 'u' }],
    currentContext: 'x',
  });
  return { config, reads, close: () => new Promise((resolve) => server.close(resolve)) };
}

let close: (() => Promise<unknown>) | undefined;
afterEach(async () => close?.());

describe('pull secrets of a workload', () => {
  it('names its own, then its ServiceAccount’s, and reads each object once while it is fresh', async () => {
    const api = await apiServer({
      '/api/v1/namespaces/a/serviceaccounts/default': { imagePullSecrets: [{ name: 'sa-cred' }] },
      '/api/v1/namespaces/a/secrets/own': {
        data: dockerConfig({ 'registry.example.org/team-a': { username: 'own', password: 'p1' } }),
      },
      '/api/v1/namespaces/a/secrets/sa-cred': {
        data: dockerConfig({ 'registry.example.org': { username: 'sa', password: 'p2' } }),
      },
    });
    close = api.close;
    let now = 0;
    const secrets = new PullSecrets({ kubeConfig: api.config, ttlMs: 60_000, now: () => now });
    const names = await secrets.secretNames('a', { imagePullSecrets: [{ name: 'own' }] });
    expect(names).toEqual(['own', 'sa-cred']);
    const image = { registry: 'registry.example.org', repository: 'team-a/app' };
    expect(await secrets.grantFor('a', names, image)).toEqual({
      credentials: { username: 'own', password: 'p1' },
      secret: 'own',
    });
    expect(await secrets.grantFor('a', names, { ...image, repository: 'team-b/app' })).toEqual({
      credentials: { username: 'sa', password: 'p2' },
      secret: 'sa-cred',
    });
    expect(await secrets.grantFor('a', names, { registry: 'docker.io', repository: 'library/nginx' })).toBeUndefined();
    // A thousand more workloads of the namespace: no more reads until the entries expire.
    for (let i = 0; i < 1000; i++) await secrets.grantFor('a', await secrets.secretNames('a', {}), image);
    expect(api.reads).toHaveLength(3);
    now += 61_000;
    await secrets.grantFor('a', await secrets.secretNames('a', {}), image);
    expect(api.reads).toHaveLength(5);
  });

  it('takes a missing Secret or ServiceAccount for none, and retries one it could not read soon', async () => {
    const api = await apiServer({ '/api/v1/namespaces/a/secrets/broken': 'error' });
    close = api.close;
    let now = 0;
    const errors: string[] = [];
    const secrets = new PullSecrets({
      kubeConfig: api.config,
      errorTtlMs: 5_000,
      now: () => now,
      onError: (what) => errors.push(what),
    });
    expect(await secrets.secretNames('a', { serviceAccountName: 'builder' })).toEqual([]);
    const image = { registry: 'r.example', repository: 'x' };
    expect(await secrets.grantFor('a', ['broken', 'absent'], image)).toBeUndefined();
    expect(errors).toEqual(['secret a/broken']);
    await secrets.grantFor('a', ['broken'], image);
    expect(api.reads.filter((read) => read.endsWith('/broken'))).toHaveLength(1);
    now += 6_000;
    await secrets.grantFor('a', ['broken'], image);
    expect(api.reads.filter((read) => read.endsWith('/broken'))).toHaveLength(2);
  });
});

describe('credentials over the network', () => {
  it.each([
    ['http://clone-function.image-clone-controller.svc:8080', false],
    ['http://clone-function.image-clone-controller.svc.cluster.local', false],
    ['http://clone-function:8080', false],
    ['http://10.96.0.12:8080', false],
    ['http://127.0.0.1:8080', false],
    ['http://[fd00::12]:8080', false],
    ['https://clone.example.com', false],
    ['http://clone.example.com', true],
    ['http://203.0.113.7:8080', true],
  ])('%s crosses the network in plain text: %s', (url, expected) => {
    expect(crossesNetworkInPlainText(new URL(url))).toBe(expected);
  });
});
