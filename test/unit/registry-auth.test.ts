import { describe, expect, it } from 'vitest';
import { Authenticator } from '../../functions/registry/auth.ts';
import { RegistryClient } from '../../functions/registry/client.ts';
import { StaticCredentials } from '../../functions/registry/credentials.ts';
import { FakeRegistry, ociError } from '../support/fake-registry.ts';

const HOST = 'registry.example.com';
const policy = { maxAttempts: 1, baseDelayMs: 1, maxDelayMs: 1, maxTotalMs: 1, maxRetryAfterMs: 1 };
const credentials = (entries: Record<string, { username: string; password: string; realms?: string[] }>) =>
  new StaticCredentials(new Map(Object.entries(entries)));
const bearerChallenge = (realm = 'https://auth.example.com/token') =>
  ociError(401, 'UNAUTHORIZED', 'authentication required', {
    'www-authenticate': `Bearer realm="${realm}",service="registry"`,
  });
const basicChallenge = () =>
  ociError(401, 'UNAUTHORIZED', 'authentication required', { 'www-authenticate': 'Basic realm="Registry"' });

/** A registry that wants a bearer token from `realm`, which hands out numbered tokens. */
function tokenRegistry(expiresIn = 300, realm = 'https://auth.example.com/token') {
  let issued = 0;
  const realmUrl = new URL(realm);
  const registry = new FakeRegistry()
    .route('GET', `${realmUrl.host}${realmUrl.pathname}`, () =>
      Response.json({ token: `token-${++issued}`, expires_in: expiresIn }),
    )
    .on((request) =>
      request.url.host === HOST && !request.headers.authorization?.startsWith('Bearer ') ? bearerChallenge(realm) : undefined,
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
    const tokenRequest = registry.requests.find((r) => r.url.host === 'auth.example.com')!;
    expect(Object.fromEntries(tokenRequest.url.searchParams)).toEqual({
      service: 'registry',
      scope: 'repository:app:pull',
      account: 'robot',
    });
    expect(tokenRequest.headers.authorization).toBe(`Basic ${btoa('robot:pw')}`);
    expect(registry.requests.filter((r) => r.url.host === HOST).at(-1)!.headers.authorization).toBe('Bearer token-2');
  });

  it("sends credentials to a realm off the registry's site only when the auth file names it", async () => {
    const elsewhere = tokenRegistry(300, 'https://tokens.elsewhere.net/token');
    await expect(head(clientFor(elsewhere.registry, { [HOST]: { username: 'robot', password: 'pw' } }))).rejects.toThrow(
      /the realm tokens.elsewhere.net is not on the registry's own site; credentials not sent/,
    );
    expect(elsewhere.registry.sentTo('tokens.elsewhere.net')).toEqual([]);
    // Anonymous pulls need no credentials, so any realm may hand out a token.
    await head(clientFor(elsewhere.registry));
    expect(elsewhere.issued()).toBe(1);

    const named = tokenRegistry(300, 'https://tokens.elsewhere.net/token');
    const client = clientFor(named.registry, { [HOST]: { username: 'robot', password: 'pw', realms: ['tokens.elsewhere.net'] } });
    await head(client);
    expect(named.registry.requests.find((r) => r.url.host === 'tokens.elsewhere.net')?.headers.authorization).toBe(
      `Basic ${btoa('robot:pw')}`,
    );
  });

  it('asks no realm at a link-local or metadata address', async () => {
    const metadata = new FakeRegistry().on(() => bearerChallenge('https://169.254.169.254/latest/token'));
    await expect(head(clientFor(metadata))).rejects.toThrow(/refusing a realm at a link-local or cloud metadata address/);
    expect(metadata.sentTo('169.254.169.254')).toEqual([]);
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
    await auth.unauthorized(HOST, bearerChallenge(), ['repository:app:pull'], false);
    expect(await auth.authorization(HOST, ['repository:app:pull'])).toBe('Bearer token-1');
    now += 50_000;
    expect(await auth.authorization(HOST, ['repository:app:pull'])).toBe('Bearer token-1');
    now += 5_000; // within the renewal margin (a tenth of 60 s)
    expect(await auth.authorization(HOST, ['repository:app:pull'])).toBe('Bearer token-2');
    expect(issued()).toBe(2);
  });

  it('refuses a realm over plain HTTP unless the registry itself is spoken to over HTTP', async () => {
    const plainRealm = new FakeRegistry().on(() => bearerChallenge('http://auth.example.com/token'));
    await expect(head(clientFor(plainRealm))).rejects.toThrow(/refusing a realm that is not https/);
    expect(plainRealm.sentTo('auth.example.com')).toEqual([]);
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

describe('credentials stay with their registry', () => {
  it('a request sent before a parallel one learned the Basic challenge is not taken for refused credentials', async () => {
    const good = `Basic ${btoa('u:right')}`;
    const registry = new FakeRegistry().on(async (request) => {
      await new Promise((resolve) => setTimeout(resolve, 5)); // all requests in flight at once
      return request.headers.authorization === good ? new Response(null, { status: 200 }) : basicChallenge();
    });
    const client = clientFor(registry, { [HOST]: { username: 'u', password: 'right' } });
    const statuses = await Promise.all(Array.from({ length: 6 }, () => head(client).then((r) => r.status)));
    expect(statuses).toEqual([200, 200, 200, 200, 200, 200]);
  });

  it('learns no challenge from where the registry redirected to, and sends it nothing', async () => {
    const registry = new FakeRegistry()
      .route(
        'HEAD',
        `${HOST}/v2/app/manifests/v1`,
        () => new Response(null, { status: 307, headers: { location: 'https://b.example.net/x' } }),
      )
      .route('HEAD', 'b.example.net/x', () => bearerChallenge('https://c.example.org/token'));
    const client = clientFor(registry, { [HOST]: { username: 'robot', password: 'pw' } });
    const send = () =>
      client.send({
        registry: HOST,
        method: 'HEAD',
        path: '/v2/app/manifests/v1',
        scopes: ['repository:app:pull'],
        what: 'check',
        expect: [200, 404],
        followRedirects: true,
      });
    await expect(send()).rejects.toThrow('check: HTTP 401 from where the registry redirected to');
    await expect(send()).rejects.toThrow(/HTTP 401 from where/);
    expect(registry.sentTo('c.example.org')).toEqual([]);
    expect(registry.requests.every((r) => r.headers.authorization === undefined)).toBe(true);
  });
});
