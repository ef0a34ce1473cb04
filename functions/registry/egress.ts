// Where the function may connect, whoever chose the address: an image reference is written by
// whoever may create a workload, and a registry's redirect by whoever runs that registry. Pure
// rules; the registry client applies them to every URL it requests (redirects included) and the
// Node entry point to the address each connection actually uses (functions/node/registry-fetch.ts).

import { isIP } from 'node:net';

/**
 * Addresses no registry lives at, but cloud credentials do: link-local (169.254.0.0/16, where
 * AWS, GCP and Azure serve instance metadata; fe80::/10) and AWS's IPv6 metadata address.
 */
export function isForbiddenAddress(address: string): boolean {
  const bare = address.replace(/^\[|\]$/g, '').toLowerCase();
  const version = isIP(bare);
  if (version === 4) return bare.startsWith('169.254.');
  if (version !== 6) return false;
  const groups = expandIpv6(bare);
  if (groups === undefined) return true; // unreadable: refuse rather than guess
  // An IPv4-mapped address (::ffff:169.254.169.254, as URLs write it: ::ffff:a9fe:a9fe).
  if (groups.slice(0, 5).every((group) => group === 0) && groups[5] === 0xffff)
    return groups[6]! >> 8 === 169 && (groups[6]! & 0xff) === 254;
  const first = groups[0]!;
  if ((first & 0xffc0) === 0xfe80) return true; // fe80::/10
  // fd00:ec2::254
  return groups.join(':') === [0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254].join(':');
}

/** The eight 16-bit groups of an IPv6 address (an embedded IPv4 tail included). */
function expandIpv6(address: string): number[] | undefined {
  let text = address.split('%')[0]!;
  const ipv4Tail = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (ipv4Tail) {
    const [a, b, c, d] = ipv4Tail.slice(1).map(Number) as [number, number, number, number];
    text = `${text.slice(0, ipv4Tail.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head, tail] = text.includes('::') ? text.split('::') : [text, undefined];
  const parse = (part: string | undefined) => (part ? part.split(':').map((group) => parseInt(group, 16)) : []);
  const left = parse(head);
  const right = parse(tail);
  const missing = 8 - left.length - right.length;
  if (tail === undefined ? missing !== 0 : missing < 0) return undefined;
  const groups = [...left, ...Array<number>(Math.max(missing, 0)).fill(0), ...right];
  return groups.every((group) => Number.isInteger(group) && group >= 0 && group <= 0xffff) ? groups : undefined;
}

/** A connection refused because its host resolved to a forbidden address (the message). */
export class ForbiddenAddressError extends Error {
  constructor(address: string) {
    super(address);
    this.name = 'ForbiddenAddressError';
  }
}

export interface RedirectPolicy {
  /** host[:port] of registries the operator configured (backup, INSECURE_REGISTRIES, credentials). */
  isConfiguredHost(host: string): boolean;
}

/**
 * Why a redirect may not be followed, or undefined when it may: only to HTTPS (plain HTTP only to a
 * registry the operator configured), and never to a forbidden address written as a literal.
 */
export function refuseRedirect(target: URL, policy: RedirectPolicy): string | undefined {
  if (target.protocol !== 'https:' && target.protocol !== 'http:') return 'a redirect to an unsupported scheme';
  if (isForbiddenAddress(target.hostname)) return 'a redirect to a link-local or cloud metadata address';
  if (target.protocol === 'http:' && !policy.isConfiguredHost(target.host)) return 'a redirect to plain HTTP';
  return undefined;
}
