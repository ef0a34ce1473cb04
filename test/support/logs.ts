// "Never logs a credential" checks for the clone function. That a credential is absent from the
// captured output proves something only if the capture would show it, had the function logged it:
// the capture could be empty, cut short, or miss the function's log lines altogether (a runtime
// that prints them elsewhere). So the capture is proven first, then searched.

import { expect } from 'vitest';
import { formatReference, parseReference } from '../../functions/contract/index.ts';
import type { CloneFunction } from '../../testbed/clone-function.ts';
import { waitFor } from '../../testbed/wait.ts';

/** A password, and the Basic Authorization value that carries it (the form a logged header would show). */
export function credentialForms(credentials: { readonly username: string; readonly password: string }): string[] {
  return [credentials.password, Buffer.from(`${credentials.username}:${credentials.password}`).toString('base64')];
}

/**
 * Asserts that none of `credentials` is in `fn`'s output. `witness` is an image this test had the
 * function copy: its log line, a value the function took from a request and logged as a field as
 * it would a leaked credential, must be in the capture, and nothing may have been cut from the
 * capture's beginning.
 */
export async function expectCredentialsNotLogged(
  fn: CloneFunction,
  witness: string,
  credentials: readonly string[],
): Promise<void> {
  const field = `"image":${JSON.stringify(formatReference(parseReference(witness)))}`;
  // Lines reach the capture through a pipe, possibly after the answer did.
  const output = await waitFor(`${field} in the function's output`, () => fn.logs().includes(field) && fn.logs(), 10_000);
  expect(fn.logsCut(), 'the capture holds all the function printed').toBe(false);
  expect(credentials.length).toBeGreaterThan(0);
  for (const credential of credentials) {
    expect(credential.length, 'a credential, not a fragment found anywhere').toBeGreaterThanOrEqual(8);
    // A logged credential is a JSON string value: it can be found as written only if JSON leaves it as it is.
    expect(JSON.stringify(credential)).toBe(`"${credential}"`);
    expect(output).not.toContain(credential);
  }
}
