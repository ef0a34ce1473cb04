import { describe, expect, it } from 'vitest';
import { Authenticator } from '../../functions/registry/auth.ts';
import { RegistryClient } from '../../functions/registry/client.ts';
import { StaticCredentials } from '../../functions/registry/credentials.ts';
import { FakeRegistry, ociError } from '../support/fake-registry.ts';

const HOST = 'registry.example';
const policy = { maxAttempts: 1, baseDelayMs: 1, maxDelayMs: 1, maxTotalMs: 1, maxRetryAfterMs: 1 };
const credentials = (entries: Record<string, { username: string; password: string }>) =>
  new StaticCredentials(new Map(Object.entries(entries)));
const bearerChallenge = (realm = 'https://auth.example/token') =>
  ociError(401, 'UNAUTHORIZED', 'authentication required', {
    'www-authenticate': `Bearer realm="${realm}",service="registry"`,
  });
const basicChallenge = () =>
  ociError(401, 'UNAUTHORIZED', 'authentication required', { 'www-authenticate': 'Basic realm="Registry"' });

/** A registry that wants a bearer token from auth.example, which hands out numbered tokens. */
function tokenRegistry(expiresIn = 300) {
  let issued = 0;
  const registry = new FakeRegistry()
    .route('GET', 'auth.example/token', () => Response.json({ token: `token-${++issued}`, expires_in: expiresIn }))
    .on((request) =>
      request.url.host === HOST && !request.headers.authorization?.startsWith('Bearer ') ? bearerChallenge() : undefined,
    )
    .route('HEAD', /\/manifests\//, () => new Response(null, { status: 404 }));
  return { registry, issued: () => issued };
}

function clientFor(registry: FakeRegistry, entries = {}, insecure: string[] = []) {
  return new RegistryClient({
    fetch: registry.fetch,
    credentials: credentials(entries),
    insecureRegistries: new Set(insecure),
    retryPolicy: policy,
  });
}

const head = (client: RegistryClient, scope = 'repository:app:pull') =>
  client.send({
    registry: HOST,
    method: 'HEAD',
    path: '/v2/app/manifests/v1',
    scopes: [scope],
    what: 'check',
    expect: [200, 404],
  });

describe('bearer tokens', () => {
  it('asks the realm once per scope set with service, scope and account, and reuses the token', async () => {
    const { registry, issued } = tokenRegistry();
    const client = clientFor(registry, { [HOST]: { username: 'robot', password: 'pw' } });
    await head(client);
    await head(client);
    await head(client, 'repository:app:pull,push');
    expect(issued()).toBe(2);
    const tokenRequest = registry.requests.find((r) => r.url.host === 'auth.example')!;
    expect(Object.fromEntries(tokenRequest.url.searchParams)).toEqual({
      service: 'registry',
      scope: 'repository:app:pull',
      account: 'robot',
    });
    expect(tokenRequest.headers.authorization).toBe(`Basic ${btoa('robot:pw')}`);
    expect(registry.requests.filter((r) => r.url.host === HOST).at(-1)!.headers.authorization).toBe('Bearer token-2');
  });

  it('shares one token request among concurrent requests', async () => {
    const { registry, issued } = tokenRegistry();
    const client = clientFor(registry);
    await head(client); // learns the challenge
    const before = issued();
    await Promise.all(Array.from({ length: 5 }, () => head(client, 'repository:other:pull')));
    expect(issued() - before).toBe(1);
  });

  it('renews a token before it expires', async () => {
    let now = 1_000_000;
    const { registry, issued } = tokenRegistry(60);
    const auth = new Authenticator({
      fetch: registry.fetch,
      credentials: credentials({}),
      isInsecure: () => false,
      now: () => now,
    });
    await auth.unauthorized(HOST, bearerChallenge(), ['repository:app:pull']);
    expect(await auth.authorization(HOST, ['repository:app:pull'])).toBe('Bearer token-1');
    now += 50_000;
    expect(await auth.authorization(HOST, ['repository:app:pull'])).toBe('Bearer token-1');
    now += 5_000; // within the renewal margin (a tenth of 60 s)
    expect(await auth.authorization(HOST, ['repository:app:pull'])).toBe('Bearer token-2');
    expect(issued()).toBe(2);
  });

  it('refuses a realm over plain HTTP unless the registry itself is spoken to over HTTP', async () => {
    const plainRealm = new FakeRegistry().on(() => bearerChallenge('http://auth.example/token'));
    await expect(head(clientFor(plainRealm))).rejects.toThrow(/refusing a realm that is not https/);
    expect(plainRealm.sentTo('auth.example')).toEqual([]);
  });
});

describe('basic credentials', () => {
  it('are sent only once the registry asked, and a refusal of them is final', async () => {
    const registry = new FakeRegistry().on((request) =>
      request.headers.authorization === `Basic ${btoa('u:right')}` ? new Response(null, { status: 200 }) : basicChallenge(),
    );
    const right = clientFor(registry, { [HOST]: { username: 'u', password: 'right' } });
    expect((await head(right)).status).toBe(200);
    expect(registry.requests.map((r) => r.headers.authorization)).toEqual([undefined, `Basic ${btoa('u:right')}`]);

    const wrong = clientFor(registry, { [HOST]: { username: 'u', password: 'wrong' } });
    await expect(head(wrong)).rejects.toThrow(/HTTP 401/);
    expect(registry.requests.length).toBe(2 + 2);
    // Known to be refused: the next request tries them once and gives up.
    await expect(head(wrong)).rejects.toThrow(/HTTP 401 \(authentication refused\)/);
    expect(registry.requests.length).toBe(2 + 2 + 1);
  });

  it('are never sent where the registry has none', async () => {
    const registry = new FakeRegistry().on(() => basicChallenge());
    await expect(head(clientFor(registry))).rejects.toThrow(/HTTP 401/);
    expect(registry.requests.every((r) => r.headers.authorization === undefined)).toBe(true);
    expect(registry.requests.length).toBeGreaterThan(0);
  });
});
