// The clone function's wire contract (docs/api.md) as zod schemas, with the TypeScript types
// inferred from them: the function builds its answers to these types, and a client (the bridge)
// parses what it receives with the same schemas. Objects are loose, so a newer function may add
// fields without breaking an older client.

import { z } from 'zod';

/** The default of MAX_IMAGES_PER_REQUEST: a client that splits larger sets stays within it. */
export const DEFAULT_MAX_IMAGES_PER_REQUEST = 50;

export const CLONE_STATUSES = ['copied', 'exists', 'failed'] as const;
export type CloneStatus = (typeof CLONE_STATUSES)[number];

/** One image's outcome, in the order the request listed the images. */
export const cloneResultSchema = z.looseObject({
  /** The normalised reference, or the input as given when it does not parse. */
  source: z.string().max(1024),
  status: z.enum(CLONE_STATUSES),
  /** `registry/repository:tag@digest` of the backup (copied, exists). */
  target: z.string().max(1024).optional(),
  /** The source's manifest digest, unchanged (copied, exists). */
  digest: z.string().max(200).optional(),
  /** Why the copy failed (failed). */
  error: z.string().optional(),
  /**
   * What a failure means for the workload, when the source said so (failed): `source_not_found`
   * (the tag, manifest or repository is gone), `source_unauthorized` (the source refused the
   * credentials the request brought, or asked for some). Other values may come in later versions.
   */
  reason: z.string().max(64).optional(),
  /** Blob bytes uploaded by this copy. */
  bytes: z.number().optional(),
  /** How long the image took; always sent by the function. */
  ms: z.number().optional(),
});
export type CloneResult = z.infer<typeof cloneResultSchema>;

export const FAILURE_REASONS = { sourceNotFound: 'source_not_found', sourceUnauthorized: 'source_unauthorized' } as const;

/**
 * Credentials for one image's source registry: those its workload could pull with (from its
 * imagePullSecrets). Used for that image's source only, never cached beyond the request.
 */
export const registryCredentialsSchema = z.strictObject({
  username: z.string({ error: '"credentials.username" must be a string' }).min(1).max(1024),
  password: z
    .string({ error: '"credentials.password" must be a string' })
    .min(1)
    .max(16 * 1024),
});
export type RegistryCredentials = z.infer<typeof registryCredentialsSchema>;

/** An image to copy: its reference, or the reference with credentials for its source registry. */
export const imageRequestSchema = z.union(
  [
    z.string(),
    z.strictObject({ image: z.string({ error: '"image" must be a string' }), credentials: registryCredentialsSchema.optional() }),
  ],
  { error: 'each image must be a reference or {"image", "credentials"}' },
);
export type ImageRequest = z.infer<typeof imageRequestSchema>;

/** The reference of an image request. */
export function imageOfRequest(request: ImageRequest): string {
  return typeof request === 'string' ? request : request.image;
}

/** The body of `POST /clone`; `maxImages` is the function's MAX_IMAGES_PER_REQUEST. */
export function cloneRequestSchema(maxImages = DEFAULT_MAX_IMAGES_PER_REQUEST) {
  return z.strictObject({
    images: z
      .array(imageRequestSchema, { error: '"images" must be a list of image references' })
      .min(1, '"images" must hold at least one image')
      .max(maxImages, `"images" holds more than ${maxImages} images (MAX_IMAGES_PER_REQUEST)`),
    callback: z
      .strictObject({
        url: z.url({ protocol: /^https?$/, error: '"callback.url" must be an http(s) URL' }),
        context: z.unknown().optional().superRefine(checkContext),
      })
      .optional(),
  });
}
export type CloneRequest = z.infer<ReturnType<typeof cloneRequestSchema>>;

/** `callback.context` comes back in the callback as it was sent: bounded, so it always can. */
export const CONTEXT_LIMITS = { bytes: 16 * 1024, depth: 16 } as const;

function checkContext(context: unknown, ctx: z.RefinementCtx): void {
  if (context === undefined) return;
  if (nestingDepth(context, CONTEXT_LIMITS.depth) > CONTEXT_LIMITS.depth) {
    ctx.addIssue({ code: 'custom', message: `"callback.context" is nested more than ${CONTEXT_LIMITS.depth} levels deep` });
  } else if (JSON.stringify(context).length > CONTEXT_LIMITS.bytes) {
    ctx.addIssue({ code: 'custom', message: `"callback.context" is larger than ${CONTEXT_LIMITS.bytes / 1024} KiB as JSON` });
  }
}

/** How deeply arrays and objects nest in a JSON value, counted without recursion up to `stopAt` + 1. */
function nestingDepth(value: unknown, stopAt: number): number {
  let deepest = 0;
  const pending: Array<{ value: unknown; depth: number }> = [{ value, depth: 0 }];
  while (pending.length > 0) {
    const { value: current, depth } = pending.pop()!;
    if (typeof current !== 'object' || current === null) continue;
    deepest = Math.max(deepest, depth + 1);
    if (deepest > stopAt) return deepest;
    for (const child of Object.values(current)) pending.push({ value: child, depth: depth + 1 });
  }
  return deepest;
}

/** `202` to a request with a callback. */
export const acceptedSchema = z.looseObject({ job: z.string() });
export type Accepted = z.infer<typeof acceptedSchema>;

/** `200` to a synchronous request. */
export const resultsAnswerSchema = z.looseObject({ results: z.array(z.unknown()) });

/** One line of the `application/x-ndjson` progress stream; the last is `done` (or `error`). */
export const cloneEventSchema = z.discriminatedUnion('type', [
  z.looseObject({ type: z.literal('image'), source: z.string(), status: z.literal('started') }),
  z.looseObject({
    type: z.literal('blob'),
    source: z.string(),
    digest: z.string(),
    done: z.number(),
    total: z.number(),
  }),
  z.looseObject({ type: z.literal('result'), result: z.unknown() }),
  z.looseObject({ type: z.literal('done'), results: z.array(z.unknown()) }),
  z.looseObject({ type: z.literal('error'), error: z.string().optional() }),
]);
export type CloneStreamLine = z.infer<typeof cloneEventSchema>;

/** The progress events the engine emits while copying (the stream's lines but `done` and `error`). */
export type CloneEvent =
  | { readonly type: 'image'; readonly source: string; readonly status: 'started' }
  | { readonly type: 'blob'; readonly source: string; readonly digest: string; readonly done: number; readonly total: number }
  | { readonly type: 'result'; readonly result: CloneResult };

/** What the bridge puts in `callback.context`: the workloads the request was made for. */
export const bridgeContextSchema = z.looseObject({
  workloads: z.array(z.string().max(600)).max(1000).optional(),
  /**
   * The images of the request that carried a workload's own credentials: source → an id naming
   * those credentials (an HMAC, never the credentials) and the pull secret they came from.
   */
  grants: z
    .record(z.string().max(1024), z.looseObject({ id: z.string().max(64), secret: z.string().max(253).optional() }))
    .optional(),
});
export type BridgeContext = z.infer<typeof bridgeContextSchema>;

/** The signed POST to `callback.url` once every image of a job is done. */
export const callbackBodySchema = z.looseObject({
  job: z.string().min(1).max(200),
  context: z.unknown(),
  results: z.array(z.unknown()).max(10_000),
});
export type CallbackBody = z.infer<typeof callbackBodySchema>;
