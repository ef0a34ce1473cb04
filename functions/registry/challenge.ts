// WWW-Authenticate challenges (RFC 7235) as registries send them:
//   Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:x:pull"
//   Basic realm="Registry Realm"

export interface Challenge {
  /** Lower-cased scheme: "bearer", "basic", … */
  readonly scheme: string;
  /** Parameter names lower-cased, values unquoted. */
  readonly params: Readonly<Record<string, string>>;
}

/** Parses every challenge in a WWW-Authenticate header value; unknown syntax is skipped, never thrown. */
export function parseChallenges(header: string | null | undefined): Challenge[] {
  if (!header) return [];
  const challenges: Challenge[] = [];
  let i = 0;
  const skipSpace = () => {
    while (i < header.length && /[\s,]/.test(header[i]!)) i++;
  };
  const readToken = () => {
    const start = i;
    while (i < header.length && /[!#$%&'*+\-.^_`|~0-9A-Za-z]/.test(header[i]!)) i++;
    return header.slice(start, i);
  };
  const readValue = () => {
    if (header[i] !== '"') {
      const start = i;
      while (i < header.length && !/[\s,]/.test(header[i]!)) i++;
      return header.slice(start, i);
    }
    let value = '';
    i++;
    while (i < header.length && header[i] !== '"') {
      if (header[i] === '\\' && i + 1 < header.length) i++;
      value += header[i];
      i++;
    }
    i++;
    return value;
  };

  skipSpace();
  while (i < header.length) {
    const scheme = readToken();
    if (!scheme) {
      i++;
      skipSpace();
      continue;
    }
    const params: Record<string, string> = {};
    for (;;) {
      while (i < header.length && /[\s]/.test(header[i]!)) i++;
      const mark = i;
      const name = readToken();
      while (i < header.length && header[i] === ' ') i++;
      if (!name || header[i] !== '=') {
        // Not "name=value": the start of the next challenge (or junk).
        i = mark;
        break;
      }
      i++;
      while (i < header.length && header[i] === ' ') i++;
      params[name.toLowerCase()] = readValue();
      while (i < header.length && header[i] === ' ') i++;
      if (header[i] === ',') i++;
    }
    challenges.push({ scheme: scheme.toLowerCase(), params });
    skipSpace();
  }
  return challenges;
}
