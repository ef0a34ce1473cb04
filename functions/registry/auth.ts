// The registry auth handshake, kept away from callers: they name the scopes they need, this module
// answers with an Authorization header. Bearer tokens are cached per registry and scope set until
// shortly before they expire; Basic credentials are sent once a registry asked for them.
// Credentials go only to the registry they belong to, or to the token realm that registry named.

import { getDomain } from 'tldts';
import { readBounded } from '../../lib/body.ts';
import { registryApiHost } from '../contract/index.ts';
import { parseChallenges, type Challenge } from './challenge.ts';
import type { CredentialSource, Credentials } from './credentials.ts';
import { isForbiddenAddress } from './egress.ts';
import { RegistryError, TransportError } from './errors.ts';
import type { FetchLike, HttpResponse } from './http.ts';

interface CachedToken {
  readonly header: string;
  readonly expiresAt: number;
}

/** Tokens without expires_in last 60 s (distribution token spec). */
const DEFAULT_TOKEN_SECONDS = 60;
const TOKEN_BODY_LIMIT = 64 * 1024;
const TOKEN_TIMEOUT_MS = 30_000;

export interface AuthenticatorOptions {
  readonly fetch: FetchLike;
  readonly credentials: CredentialSource;
  /** Whether plain HTTP is acceptable for this registry (and so for its token realm). */
  readonly isInsecure: (registry: string) => boolean;
  readonly now?: () => number;
}

export class Authenticator {
  readonly #options: AuthenticatorOptions;
  readonly #now: () => number;
  readonly #challenges = new Map<string, Challenge>();
  readonly #tokens = new Map<string, CachedToken>();
  readonly #pending = new Map<string, Promise<CachedToken>>();

  constructor(options: AuthenticatorOptions) {
    this.#options = options;
    this.#now = options.now ?? Date.now;
  }

  /** The Authorization header for a request, or undefined while the registry has not asked for one. */
  async authorization(registry: string, scopes: readonly string[]): Promise<string | undefined> {
    const challenge = this.#challenges.get(registry);
    if (!challenge) return undefined;
    if (challenge.scheme === 'basic') {
      const credentials = await this.#options.credentials.get(registry);
      return credentials ? basicHeader(credentials) : undefined;
    }
    const key = tokenKey(registry, challenge, scopes);
    const cached = this.#tokens.get(key);
    if (cached && cached.expiresAt > this.#now()) return cached.header;
    let pending = this.#pending.get(key);
    if (!pending) {
      pending = this.#fetchToken(registry, challenge, scopes).finally(() => this.#pending.delete(key));
      this.#pending.set(key, pending);
    }
    const token = await pending;
    this.#tokens.set(key, token);
    return token.header;
  }

  /**
   * Learns from a 401: remembers the challenge and forgets the token that was refused. Returns the
   * scopes to ask for on the one retry the caller makes (the challenge may name one more), or
   * undefined when trying again cannot help.
   */
  async unauthorized(
    registry: string,
    response: HttpResponse,
    scopes: readonly string[],
    sentAuthorization: boolean,
  ): Promise<string[] | undefined> {
    const challenges = parseChallenges(response.headers.get('www-authenticate'));
    const challenge = challenges.find((c) => c.scheme === 'bearer') ?? challenges.find((c) => c.scheme === 'basic');
    if (!challenge) return undefined;
    const known = this.#challenges.get(registry);
    this.#challenges.set(registry, { scheme: challenge.scheme, params: { ...challenge.params, scope: '' } });
    if (challenge.scheme === 'basic') {
      // Basic credentials this request sent and the registry refused are wrong, unless they can be
      // renewed (ECR tokens). A request sent before a parallel one learned the challenge sent none.
      if (sentAuthorization && known?.scheme === 'basic') return this.renewCredentials(registry) ? [...scopes] : undefined;
      return (await this.#options.credentials.get(registry)) ? [...scopes] : undefined;
    }
    this.#tokens.delete(tokenKey(registry, challenge, scopes));
    const asked = challenge.params.scope?.split(' ').filter(Boolean) ?? [];
    return [...new Set([...scopes, ...asked])];
  }

  /**
   * After a 403 from a registry spoken to with renewable Basic credentials (ECR answers an expired
   * token that way): forget them. Returns whether a retry with fresh ones makes sense.
   */
  renewCredentials(registry: string): boolean {
    if (this.#challenges.get(registry)?.scheme !== 'basic') return false;
    return this.#options.credentials.invalidate?.(registry) ?? false;
  }

  async #fetchToken(registry: string, challenge: Challenge, scopes: readonly string[]): Promise<CachedToken> {
    const realm = challenge.params.realm;
    if (!realm) throw new RegistryError(`token auth for ${registry}: the challenge names no realm`, 401);
    let url: URL;
    try {
      url = new URL(realm);
    } catch {
      throw new RegistryError(`token auth for ${registry}: invalid realm`, 401);
    }
    if (url.protocol !== 'https:' && !(url.protocol === 'http:' && this.#options.isInsecure(registry))) {
      throw new RegistryError(`token auth for ${registry}: refusing a realm that is not https`, 401);
    }
    if (isForbiddenAddress(url.hostname)) {
      throw new RegistryError(`token auth for ${registry}: refusing a realm at a link-local or cloud metadata address`, 401);
    }
    const credentials = await this.#options.credentials.get(registry);
    if (credentials && !mayReceiveCredentials(url, registry, credentials)) {
      throw new RegistryError(
        `token auth for ${registry}: the realm ${url.host} is not on the registry's own site; credentials not sent ` +
          `(list it under "realms" in the registry's auth entry to allow it)`,
        401,
      );
    }
    if (challenge.params.service) url.searchParams.set('service', challenge.params.service);
    for (const scope of scopes) url.searchParams.append('scope', scope);
    if (credentials) url.searchParams.set('account', credentials.username);
    const headers: Record<string, string> = { accept: 'application/json' };
    if (credentials) headers.authorization = basicHeader(credentials);

    const requestedAt = this.#now();
    // No redirects: credentials were meant for this realm only ("error" does not exist in workerd).
    // Shared by every request waiting for this token: bounded by time, not by one copy's signal.
    let response: HttpResponse;
    try {
      response = await this.#options.fetch(url, { headers, redirect: 'manual', signal: AbortSignal.timeout(TOKEN_TIMEOUT_MS) });
    } catch (error) {
      throw new TransportError(`token request for ${registry}: cannot reach ${url.host}`, error);
    }
    if (!response.ok) {
      throw await RegistryError.fromResponse(response, `token request for ${registry} (${url.host})`);
    }
    const { bytes, truncated } = await readBounded(response.body, { limit: TOKEN_BODY_LIMIT });
    if (truncated) throw new RegistryError(`token response for ${registry} too large`, 502);
    const text = new TextDecoder().decode(bytes);
    let body: { token?: unknown; access_token?: unknown; expires_in?: unknown };
    try {
      body = JSON.parse(text);
    } catch {
      throw new RegistryError(`token response for ${registry} is not JSON`, 502);
    }
    const token = typeof body.token === 'string' ? body.token : body.access_token;
    if (typeof token !== 'string' || token === '') {
      throw new RegistryError(`token response for ${registry} holds no token`, 502);
    }
    const seconds = typeof body.expires_in === 'number' && body.expires_in > 0 ? body.expires_in : DEFAULT_TOKEN_SECONDS;
    // Renew early: a tenth of the lifetime, at most 30 s, so a token never expires in flight.
    const margin = Math.min(30, seconds / 10) * 1000;
    return { header: `Bearer ${token}`, expiresAt: requestedAt + seconds * 1000 - margin };
  }
}

/**
 * Credentials go to a token realm on the registry's own site (same registrable domain:
 * registry-1.docker.io → auth.docker.io, registry.gitlab.com → gitlab.com), or one the auth file
 * names for that registry; never to a host the registry merely named.
 */
function mayReceiveCredentials(realm: URL, registry: string, credentials: Credentials): boolean {
  const registryHost = new URL(`https://${registryApiHost(registry)}`).hostname;
  if (realm.hostname === registryHost || credentials.realms?.includes(realm.host)) return true;
  // Sites, like cookies, ignore ports; an address or a single-label name is a site of its own.
  const site = (host: string) => getDomain(host, { allowPrivateDomains: true });
  const realmSite = site(realm.hostname);
  return realmSite !== null && realmSite === site(registryHost);
}

function tokenKey(registry: string, challenge: Challenge, scopes: readonly string[]): string {
  return `${registry} ${challenge.params.realm ?? ''} ${challenge.params.service ?? ''} ${[...scopes].sort().join(' ')}`;
}

function basicHeader(credentials: Credentials): string {
  const bytes = new TextEncoder().encode(`${credentials.username}:${credentials.password}`);
  return `Basic ${btoa(String.fromCharCode(...bytes))}`;
}

export function pullScope(repository: string): string {
  return `repository:${repository}:pull`;
}

export function pushScope(repository: string): string {
  return `repository:${repository}:pull,push`;
}
