// Registry credentials from a Docker config JSON ({"auths": {host: {auth | username+password}}}),
// the format of ~/.docker/config.json and of kubernetes.io/dockerconfigjson Secrets.

import { isDockerHub } from '../contract/index.ts';

export interface Credentials {
  readonly username: string;
  readonly password: string;
  /**
   * Token realms (host[:port]) off the registry's own site that may receive these credentials:
   * an auth entry's "realms" (a key of ours; Docker ignores it).
   */
  readonly realms?: readonly string[];
}

/** Where the client asks for credentials; ECR implements it with short-lived tokens. */
export interface CredentialSource {
  get(registry: string): Promise<Credentials | undefined> | Credentials | undefined;
  /**
   * Forgets short-lived credentials the registry refused, so the next get() fetches fresh ones.
   * Returns whether there was anything to renew (static credentials: never).
   */
  invalidate?(registry: string): boolean;
}

export class DockerConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DockerConfigError';
  }
}

/** Parses the JSON; errors name the entry that is wrong but never echo secret values. */
export function parseDockerConfig(json: string): Map<string, Credentials> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(json);
  } catch {
    throw new DockerConfigError('registry credentials are not valid JSON (expected {"auths": {…}})');
  }
  if (!isObject(parsed) || !isObject(parsed.auths)) {
    throw new DockerConfigError('registry credentials need an "auths" object (Docker config JSON)');
  }
  const result = new Map<string, Credentials>();
  for (const [key, entry] of Object.entries(parsed.auths)) {
    if (!isObject(entry)) throw new DockerConfigError(`registry credentials for "${key}" must be an object`);
    const registry = registryFromKey(key);
    const realms = realmsOf(entry.realms, key);
    if (typeof entry.username === 'string' && typeof entry.password === 'string') {
      result.set(registry, { username: entry.username, password: entry.password, ...realms });
      continue;
    }
    if (typeof entry.auth === 'string' && entry.auth !== '') {
      const decoded = decodeBase64(entry.auth);
      const colon = decoded?.indexOf(':') ?? -1;
      if (decoded === undefined || colon <= 0) {
        throw new DockerConfigError(`registry credentials for "${key}": "auth" must be base64 of "user:password"`);
      }
      result.set(registry, { username: decoded.slice(0, colon), password: decoded.slice(colon + 1), ...realms });
      continue;
    }
    throw new DockerConfigError(`registry credentials for "${key}" need "auth" or "username" and "password"`);
  }
  return result;
}

function realmsOf(value: unknown, key: string): { realms?: string[] } {
  if (value === undefined) return {};
  if (!Array.isArray(value) || !value.every((realm) => typeof realm === 'string')) {
    throw new DockerConfigError(`registry credentials for "${key}": "realms" must be a list of token realm hosts or URLs`);
  }
  try {
    return {
      realms: value.map((realm: string) => new URL(/^[a-z]+:\/\//i.test(realm) ? realm : `https://${realm}`).host.toLowerCase()),
    };
  } catch {
    throw new DockerConfigError(`registry credentials for "${key}": "realms" holds something that is not a host or URL`);
  }
}

/** "https://index.docker.io/v1/" → "docker.io"; "https://quay.io" → "quay.io". */
export function registryFromKey(key: string): string {
  const host = key
    .replace(/^[a-z]+:\/\//i, '')
    .replace(/\/.*$/, '')
    .toLowerCase();
  return isDockerHub(host) ? 'docker.io' : host;
}

export class StaticCredentials implements CredentialSource {
  readonly #byRegistry: Map<string, Credentials>;
  constructor(byRegistry: Map<string, Credentials>) {
    this.#byRegistry = byRegistry;
  }
  get(registry: string): Credentials | undefined {
    return this.#byRegistry.get(isDockerHub(registry) ? 'docker.io' : registry.toLowerCase());
  }
}

function decodeBase64(text: string): string | undefined {
  if (!/^[A-Za-z0-9+/=\s]+$/.test(text)) return undefined;
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(
      Uint8Array.from(atob(text.replace(/\s/g, '')), (c) => c.charCodeAt(0)),
    );
  } catch {
    return undefined;
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
