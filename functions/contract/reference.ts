// Image references, parsed and normalised the way the distribution reference grammar does
// (github.com/distribution/reference): docker.io and library/ defaults, registry ports,
// localhost, tag and digest together, length limits. Pure; shared by the function and the bridge.

import { printable } from '../../lib/text.ts';

export const DOCKER_HUB = 'docker.io';
const DOCKER_HUB_API_HOST = 'registry-1.docker.io';
const LEGACY_DOCKER_HUB = 'index.docker.io';

/** The longest repository name (domain included) the grammar accepts. */
export const NAME_TOTAL_LENGTH_MAX = 255;
const TAG_LENGTH_MAX = 128;

const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[_.]|__|-+)[a-z0-9]+)*$/;
const DOMAIN_COMPONENT = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])';
const DOMAIN = new RegExp(`^(?:${DOMAIN_COMPONENT}(?:\\.${DOMAIN_COMPONENT})*|\\[[a-fA-F0-9:]+\\])(?::[0-9]+)?$`);
const TAG = /^[\w][\w.-]*$/;
const DIGEST = /^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$/;
const ANY_DIGEST = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;

export interface ImageReference {
  /** Registry as written in references, normalised: "docker.io", "quay.io", "localhost:5000". */
  readonly registry: string;
  /** Repository path inside the registry: "library/nginx". */
  readonly repository: string;
  readonly tag?: string;
  readonly digest?: string;
}

export class InvalidReferenceError extends Error {
  constructor(reference: string, reason: string) {
    super(`invalid image reference "${truncate(reference)}": ${reason}`);
    this.name = 'InvalidReferenceError';
  }
}

/**
 * Parses `[registry/]path[:tag][@digest]`, applying Docker's defaults: a first component without
 * a dot or a port that is not "localhost" is part of a docker.io path, a single-component docker.io
 * path gets "library/", and a reference with neither tag nor digest gets the tag "latest".
 */
export function parseReference(input: string): ImageReference {
  if (typeof input !== 'string' || input.length === 0) {
    throw new InvalidReferenceError(String(input), 'empty reference');
  }
  if (input !== input.trim()) throw new InvalidReferenceError(input, 'surrounding whitespace');

  let rest = input;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at !== -1) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!ANY_DIGEST.test(digest)) throw new InvalidReferenceError(input, 'invalid digest format');
    if (!DIGEST.test(digest)) {
      throw new InvalidReferenceError(
        input,
        'unsupported digest (expected sha256:<64 lowercase hex> or sha512:<128 lowercase hex>)',
      );
    }
  }

  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw new InvalidReferenceError(input, `invalid tag "${truncate(tag)}"`);
    if (tag.length > TAG_LENGTH_MAX) {
      throw new InvalidReferenceError(input, `tag longer than ${TAG_LENGTH_MAX} characters`);
    }
  }

  if (rest.length === 0) throw new InvalidReferenceError(input, 'missing repository name');
  if (rest.length > NAME_TOTAL_LENGTH_MAX) {
    throw new InvalidReferenceError(input, `repository name longer than ${NAME_TOTAL_LENGTH_MAX} characters`);
  }

  let { registry, repository } = splitRegistry(rest);
  if (!DOMAIN.test(registry)) {
    throw new InvalidReferenceError(input, `invalid registry host "${truncate(registry)}"`);
  }
  const port = /:(\d+)$/.exec(registry)?.[1];
  if (port !== undefined && !(Number(port) >= 1 && Number(port) <= 65535)) {
    throw new InvalidReferenceError(input, `invalid registry port ${truncate(port)} (1 to 65535)`);
  }
  if (registry === LEGACY_DOCKER_HUB) registry = DOCKER_HUB;
  if (registry === DOCKER_HUB && !repository.includes('/')) repository = `library/${repository}`;

  const components = repository.split('/');
  for (const component of components) {
    if (PATH_COMPONENT.test(component)) continue;
    if (PATH_COMPONENT.test(component.toLowerCase())) {
      throw new InvalidReferenceError(input, 'repository name must be lowercase');
    }
    throw new InvalidReferenceError(
      input,
      component === ''
        ? 'empty path component'
        : `invalid path component "${truncate(component)}" (lowercase letters, digits and . _ __ - separators)`,
    );
  }
  if (registry === DOCKER_HUB && /^[a-f0-9]{64}$/.test(repository.replace(/^library\//, ''))) {
    throw new InvalidReferenceError(input, 'a repository name cannot be a 64-character hexadecimal string');
  }
  const fullLength = registry.length + 1 + repository.length;
  if (fullLength > NAME_TOTAL_LENGTH_MAX) {
    throw new InvalidReferenceError(input, `repository name longer than ${NAME_TOTAL_LENGTH_MAX} characters`);
  }

  if (tag === undefined && digest === undefined) tag = 'latest';
  return { registry, repository, ...(tag !== undefined && { tag }), ...(digest !== undefined && { digest }) };
}

function splitRegistry(name: string): { registry: string; repository: string } {
  const slash = name.indexOf('/');
  const first = slash === -1 ? '' : name.slice(0, slash);
  const looksLikeHost =
    slash !== -1 && (first.includes('.') || first.includes(':') || first === 'localhost' || first !== first.toLowerCase());
  return looksLikeHost ? { registry: first, repository: name.slice(slash + 1) } : { registry: DOCKER_HUB, repository: name };
}

/** `registry/repository` */
export function repositoryName(ref: Pick<ImageReference, 'registry' | 'repository'>): string {
  return `${ref.registry}/${ref.repository}`;
}

/** The canonical string: `docker.io/library/nginx:1.27@sha256:…` */
export function formatReference(ref: ImageReference): string {
  return `${repositoryName(ref)}${ref.tag !== undefined ? `:${ref.tag}` : ''}${ref.digest !== undefined ? `@${ref.digest}` : ''}`;
}

/**
 * The shortest name that parses back to the same repository, as `docker` prints it:
 * "nginx" for docker.io/library/nginx, "bitnami/redis" for docker.io/bitnami/redis.
 */
export function familiarName(ref: Pick<ImageReference, 'registry' | 'repository'>): string {
  if (ref.registry !== DOCKER_HUB) return repositoryName(ref);
  const first = ref.repository.slice(0, ref.repository.indexOf('/'));
  // A docker.io path whose first component looks like a host must keep the domain to parse back.
  if (first.includes('.') || first === 'localhost') return repositoryName(ref);
  const library = /^library\/([^/]+)$/.exec(ref.repository);
  return library ? library[1]! : ref.repository;
}

/** The host that serves the registry API for a registry name (Docker Hub's differs). */
export function registryApiHost(registry: string): string {
  return registry === DOCKER_HUB ? DOCKER_HUB_API_HOST : registry;
}

export function isDockerHub(registry: string): boolean {
  return registry === DOCKER_HUB || registry === LEGACY_DOCKER_HUB || registry === DOCKER_HUB_API_HOST;
}

/** What is echoed of the input: escaped and short, whatever it held. */
function truncate(text: string): string {
  return printable(text, 80);
}
