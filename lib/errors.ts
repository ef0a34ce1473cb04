// One line describing any error, for results, log lines and Events: the message and its cause's,
// no stack, bounded in length. The class name is added only where the message alone would not say
// what happened ("The operation was aborted due to timeout").

const MAX_LENGTH = 500;
const NAMED = new Set(['TimeoutError', 'AbortError']);

export function describeError(error: unknown): string {
  if (error instanceof Error) {
    const name = NAMED.has(error.name) ? `${error.name}: ` : '';
    const cause = error.cause instanceof Error ? `: ${error.cause.message}` : '';
    return bounded(`${name}${error.message}${cause}`);
  }
  return bounded(String(error));
}

function bounded(text: string): string {
  return text.length > MAX_LENGTH ? `${text.slice(0, MAX_LENGTH - 3)}...` : text;
}
