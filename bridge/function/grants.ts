// One copy of a source image per set of credentials: a workload's pull secret may unlock an image
// another workload may not pull, so what one got copied with its credentials never serves the
// other. The bridge tells copies apart by a key: the source alone when a copy needs no
// credentials (anyone may use it), else the source and an id of the credentials, an HMAC under a
// key of this process that names them without revealing them.

import { createHmac, randomBytes } from 'node:crypto';
import type { PullGrant } from '../kube/pull-secrets.ts';

/** A copy the bridge may ask for: the source, the key its outcome is kept under, the credentials if any. */
export interface CopyOrder {
  readonly source: string;
  readonly key: string;
  readonly grant?: PullGrant & { readonly id: string };
}

export class GrantIds {
  readonly #secret: Uint8Array;

  constructor(secret: Uint8Array = randomBytes(32)) {
    this.#secret = secret;
  }

  /** The order for `source`, with `grant` when the workload's pull secrets apply to it. */
  order(source: string, grant: PullGrant | undefined): CopyOrder {
    if (grant === undefined) return { source, key: source };
    const { username, password } = grant.credentials;
    const id = createHmac('sha256', this.#secret).update(`${username}\0${password}`).digest('base64url').slice(0, 22);
    return { source, key: copyKey(source, id), grant: { ...grant, id } };
  }
}

/** The ledger key of a copy of `source` made with the credentials `grantId` names. */
export function copyKey(source: string, grantId: string | undefined): string {
  return grantId === undefined ? source : `${source} ${grantId}`;
}
