// Work run side by side ends before its caller goes on, failure or not. On a failure the usual
// Promise.all answers at once and leaves the rest running unseen; on Workers that is worse than
// untidy: a request's I/O ends with the request, so a transfer still running after the answer
// never settles, and holds what it holds (a transfer slot the whole isolate shares) for ever.

/** Promise.all that settles once every promise has, then rejects with the first failure in time. */
export async function allSettled<T extends readonly unknown[] | []>(
  promises: T,
): Promise<{ -readonly [K in keyof T]: Awaited<T[K]> }> {
  let failure: { error: unknown } | undefined;
  for (const promise of promises) {
    Promise.resolve(promise).catch((error: unknown) => {
      failure ??= { error };
    });
  }
  const outcomes = await Promise.allSettled(promises);
  if (failure !== undefined) throw failure.error;
  return outcomes.map((outcome) => (outcome as PromiseFulfilledResult<unknown>).value) as {
    -readonly [K in keyof T]: Awaited<T[K]>;
  };
}
