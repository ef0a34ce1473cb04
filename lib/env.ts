// Configuration from environment variables, shared by the bridge and the function: the same
// parsing rules and messages for both. A blank value (a ConfigMap key left empty) means unset;
// errors name every variable that is wrong at once, and never echo a secret's value.

import { z } from 'zod';

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

export type Environment = Readonly<Record<string, string | undefined>>;

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** Parses `env` with `schema`; blank values count as unset. Throws a ConfigError naming each problem. */
export function parseEnvironment<Schema extends z.ZodType>(schema: Schema, env: Environment): z.output<Schema> {
  const present = Object.fromEntries(
    Object.entries(env).flatMap(([name, value]) => (value === undefined || value.trim() === '' ? [] : [[name, value.trim()]])),
  );
  const parsed = schema.safeParse(present);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => `${issue.path.join('.')} ${issue.message}`);
    throw new ConfigError(`invalid configuration: ${problems.join('; ')}`);
  }
  return parsed.data;
}

export const optionalString = z.string().optional();

export function required(description: string) {
  return z.string({ error: `is required (${description})` });
}

export function integer(fallback: number, min: number, max: number) {
  return optionalString.transform((value, ctx) => {
    if (value === undefined) return fallback;
    const parsed = Number(value);
    if (!Number.isInteger(parsed) || parsed < min || parsed > max) {
      ctx.addIssue({ code: 'custom', message: `must be an integer from ${min} to ${max}` });
      return z.NEVER;
    }
    return parsed;
  });
}

export function boolean<Fallback extends boolean | undefined>(fallback: Fallback) {
  return optionalString.transform((value, ctx): boolean | Fallback => {
    if (value === undefined) return fallback;
    if (/^(1|true|yes|on)$/i.test(value)) return true;
    if (/^(0|false|no|off)$/i.test(value)) return false;
    ctx.addIssue({ code: 'custom', message: 'must be true or false' });
    return z.NEVER;
  });
}

/** A comma list; blank items are dropped. */
export const list = optionalString.transform((value) =>
  (value ?? '')
    .split(',')
    .map((item) => item.trim())
    .filter(Boolean),
);

export function oneOf<const Values extends readonly [string, ...string[]]>(values: Values) {
  const message = values.length === 2 ? `must be ${values[0]} or ${values[1]}` : `must be one of ${values.join(', ')}`;
  return z.enum(values, { error: message }).optional();
}

export const logLevel = oneOf(LOG_LEVELS).transform((value): LogLevel => value ?? 'info');

/** A shared secret: long enough to resist guessing. */
export function secret(purpose: string) {
  return required(purpose).min(16, 'must be at least 16 characters (generate one with: openssl rand -hex 32)');
}

/** An http(s) URL without credentials in it (those belong in secrets). */
export function httpUrl(what: string) {
  return optionalString.transform((value, ctx) => {
    if (value === undefined) return undefined;
    let url: URL | undefined;
    try {
      url = new URL(value);
    } catch {
      url = undefined;
    }
    if (url === undefined || (url.protocol !== 'http:' && url.protocol !== 'https:')) {
      ctx.addIssue({ code: 'custom', message: `must be an http(s) URL (${what})` });
      return z.NEVER;
    }
    if (url.username !== '' || url.password !== '') {
      ctx.addIssue({ code: 'custom', message: 'must not carry credentials (use AUTH_TOKEN)' });
      return z.NEVER;
    }
    return value;
  });
}

export const awsRegion = optionalString.pipe(
  z
    .string()
    .regex(/^[a-z]{2}(?:-[a-z]+)+-\d$/, 'must be an AWS region such as eu-west-1')
    .optional(),
);
