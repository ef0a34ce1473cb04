import type { lookup } from 'node:dns';
import { describe, expect, it } from 'vitest';
import { guardedLookup } from '../../functions/node/registry-fetch.ts';
import { isForbiddenAddress, refuseRedirect } from '../../functions/registry/egress.ts';

describe('egress rules', () => {
  it('forbid link-local and cloud metadata addresses however they are written', () => {
    for (const address of [
      '169.254.169.254',
      '169.254.0.1',
      '[fe80::1]',
      'fe80::abcd%eth0',
      'fd00:ec2::254',
      'fd00:ec2:0:0:0:0:0:254',
      '::ffff:169.254.169.254',
      '[::ffff:a9fe:a9fe]',
    ]) {
      expect(isForbiddenAddress(address), address).toBe(true);
    }
    for (const address of [
      '127.0.0.1',
      '10.0.0.5',
      '192.168.1.1',
      '::1',
      'fd00:ec2::253',
      '2001:db8::1',
      'registry.example.com',
    ]) {
      expect(isForbiddenAddress(address), address).toBe(false);
    }
  });

  it('follow redirects to HTTPS, to plain HTTP only at a configured registry, never to a metadata address', () => {
    const policy = { isConfiguredHost: (host: string) => host === 'mirror.internal:5000' };
    expect(refuseRedirect(new URL('https://s3.amazonaws.com/bucket/blob'), policy)).toBeUndefined();
    expect(refuseRedirect(new URL('http://mirror.internal:5000/v2/x'), policy)).toBeUndefined();
    expect(refuseRedirect(new URL('http://admin.internal:8080/'), policy)).toBe('a redirect to plain HTTP');
    expect(refuseRedirect(new URL('https://169.254.169.254/latest/'), policy)).toBe(
      'a redirect to a link-local or cloud metadata address',
    );
    // The URL parser turns a number into the address it stands for: the rule sees the address.
    expect(refuseRedirect(new URL('https://2852039166/'), policy)).toBe('a redirect to a link-local or cloud metadata address');
    expect(refuseRedirect(new URL('file:///etc/passwd'), policy)).toBe('a redirect to an unsupported scheme');
  });

  it('refuse a name that resolves to a forbidden address, at the lookup the connection uses', async () => {
    const resolving = (answer: string) =>
      ((_host: string, options: { all?: boolean }, callback: (...args: unknown[]) => void) =>
        options.all ? callback(null, [{ address: answer, family: 4 }]) : callback(null, answer, 4)) as unknown as typeof lookup;
    const run = (answer: string, all: boolean) =>
      new Promise<{ error: Error | null; address: unknown }>((resolve) =>
        guardedLookup(resolving(answer))('metadata.example', { all }, (error, address) => resolve({ error, address })),
      );
    expect((await run('169.254.169.254', false)).error?.name).toBe('ForbiddenAddressError');
    expect((await run('169.254.169.254', true)).error?.message).toBe('169.254.169.254');
    expect(await run('10.1.2.3', true)).toEqual({ error: null, address: [{ address: '10.1.2.3', family: 4 }] });
  });
});
