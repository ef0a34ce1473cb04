// docs/api.md is the contract as people read it; functions/contract/schemas.ts is the contract as
// the function and the bridge parse it. Every example in the document is read here with the
// schema it illustrates, so the two cannot drift apart unnoticed. Each example lives under a known
// heading; an example under any other heading fails until it is given its schema here.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { z } from 'zod';
import {
  acceptedSchema,
  CALLBACK_HEADERS,
  callbackBodySchema,
  cloneEventSchema,
  cloneRequestSchema,
  cloneResultSchema,
  imageOfRequest,
  imageRequestSchema,
  parseReference,
  resultsAnswerSchema,
} from '../../functions/contract/index.ts';

const API_DOC = readFileSync(join(import.meta.dirname, '../../docs/api.md'), 'utf8');

interface Example {
  /** The heading the example stands under, as written. */
  readonly section: string;
  /** 1-based line of its first line, for the messages. */
  readonly line: number;
  readonly text: string;
}

/** Fenced code blocks, and the inline code spans outside them. */
function examplesOf(markdown: string): { fenced: Example[]; inline: Example[] } {
  const fenced: Example[] = [];
  const inline: Example[] = [];
  let section = '';
  let block: { line: number; lines: string[] } | undefined;
  for (const [index, line] of markdown.split('\n').entries()) {
    if (block) {
      if (line.startsWith('```')) {
        fenced.push({ section, line: block.line, text: block.lines.join('\n') });
        block = undefined;
      } else {
        block.lines.push(line);
      }
    } else if (line.startsWith('```')) {
      block = { line: index + 2, lines: [] };
    } else {
      section = /^#+\s+(.*)$/.exec(line)?.[1] ?? section;
      for (const match of line.matchAll(/`([^`]+)`/g)) inline.push({ section, line: index + 1, text: match[1]! });
    }
  }
  return { fenced, inline };
}

type Problems = string[];

/** What parseJson gives for text that is not JSON (the problem is reported once, there). */
const NOT_JSON = Symbol('not JSON');

function parseJson(where: string, text: string, problems: Problems): unknown {
  try {
    return JSON.parse(text);
  } catch (error) {
    problems.push(`${where}: not JSON (${(error as Error).message})`);
    return NOT_JSON;
  }
}

/** Whether `value` parses with `schema`; each issue is a problem, named by its path. */
function conforms(where: string, what: string, schema: z.ZodType, value: unknown, problems: Problems): boolean {
  if (value === NOT_JSON) return false;
  const parsed = schema.safeParse(value);
  for (const issue of parsed.error?.issues ?? []) {
    problems.push(`${where}: not a valid ${what} at "${issue.path.join('.')}": ${issue.message}`);
  }
  return parsed.success;
}

function checkResults(where: string, results: readonly unknown[], problems: Problems): void {
  for (const [index, result] of results.entries()) {
    if (!conforms(`${where}, result ${index}`, 'result', cloneResultSchema, result, problems)) continue;
    const { target, digest } = cloneResultSchema.parse(result);
    // The backup is pinned by the source's digest: the two fields must tell the same story.
    if (target !== undefined && digest !== undefined && !target.endsWith(`@${digest}`)) {
      problems.push(`${where}, result ${index}: target ${target} is not pinned by digest ${digest}`);
    }
  }
}

function checkRequest(where: string, text: string, problems: Problems): void {
  const request = parseJson(where, text, problems);
  if (!conforms(where, 'request', cloneRequestSchema(), request, problems)) return;
  // The function refuses a request whose references do not parse, so the example must parse too.
  for (const image of cloneRequestSchema().parse(request).images.map(imageOfRequest)) {
    try {
      parseReference(image);
    } catch (error) {
      problems.push(`${where}: ${image} is refused: ${(error as Error).message}`);
    }
  }
}

function checkResultsAnswer(where: string, text: string, problems: Problems): void {
  const answer = parseJson(where, text, problems);
  if (conforms(where, '200 answer', resultsAnswerSchema, answer, problems)) {
    checkResults(where, resultsAnswerSchema.parse(answer).results, problems);
  }
}

function checkStreamLine(where: string, text: string, problems: Problems): z.infer<typeof cloneEventSchema> | undefined {
  const value = parseJson(where, text, problems);
  if (!conforms(where, 'progress line', cloneEventSchema, value, problems)) return undefined;
  const line = cloneEventSchema.parse(value);
  if (line.type === 'result') checkResults(where, [line.result], problems);
  if (line.type === 'done') checkResults(where, line.results, problems);
  return line;
}

function checkStream(where: string, text: string, problems: Problems): void {
  const lines = text.split('\n').filter((line) => line.trim() !== '');
  const last = lines.map((line, index) => checkStreamLine(`${where}, line ${index + 1}`, line, problems)).at(-1);
  if (last && last.type !== 'done' && last.type !== 'error') {
    problems.push(`${where}: the stream ends with ${last.type}, not done or error`);
  }
}

/** The callback as an HTTP message: request line, headers, a blank line, the JSON body. */
function checkCallback(where: string, text: string, problems: Problems): void {
  const blank = text.indexOf('\n\n');
  const [requestLine, ...headerLines] = text.slice(0, blank).split('\n');
  if (!/^POST \S+$/.test(requestLine ?? '')) problems.push(`${where}: not a POST request line: ${requestLine}`);
  const headers = new Map(
    headerLines.map((line) => [line.slice(0, line.indexOf(':')), line.slice(line.indexOf(':') + 1).trim()]),
  );
  const expected = ['content-type', ...Object.values(CALLBACK_HEADERS)].sort();
  if (JSON.stringify([...headers.keys()].sort()) !== JSON.stringify(expected)) {
    problems.push(`${where}: headers ${[...headers.keys()].join(', ')}, the function sends ${expected.join(', ')}`);
  }
  if (headers.get('content-type') !== 'application/json') problems.push(`${where}: the body is sent as application/json`);
  if (!headers.get(CALLBACK_HEADERS.signature)?.startsWith('sha256=')) problems.push(`${where}: signatures start with sha256=`);
  const body = parseJson(`${where}, body`, text.slice(blank + 2), problems);
  if (conforms(`${where}, body`, 'callback body', callbackBodySchema, body, problems)) {
    checkResults(`${where}, body`, callbackBodySchema.parse(body).results, problems);
  }
}

/** Each heading that holds an example, and how its one example is checked. */
const SECTIONS: Readonly<Record<string, (where: string, text: string, problems: Problems) => void>> = {
  '`POST /clone`': checkRequest,
  'Synchronous answer (no callback): `200`': checkResultsAnswer,
  'Progress stream: `Accept: application/x-ndjson`': checkStream,
  'With a callback: `202`, then a signed POST': checkCallback,
};

/** Inline answers such as `202 {"job":"<id>"}`: JSON after a status, with a schema where the contract has one. */
const INLINE_ANSWER_SCHEMAS: Readonly<Record<number, readonly [string, z.ZodType]>> = { 202: ['202 answer', acceptedSchema] };

function problemsOf(markdown: string): string[] {
  const problems: Problems = [];
  const { fenced, inline } = examplesOf(markdown);
  for (const section of Object.keys(SECTIONS)) {
    const count = fenced.filter((example) => example.section === section).length;
    if (count !== 1) problems.push(`"${section}" holds ${count} examples, not 1`);
  }
  for (const example of fenced) {
    const where = `docs/api.md:${example.line} (${example.section})`;
    const check = SECTIONS[example.section];
    if (check) check(where, example.text, problems);
    else problems.push(`${where}: an example under a heading this test does not know; check it against its schema here`);
  }
  for (const span of inline) {
    const where = `docs/api.md:${span.line} \`${span.text}\``;
    const answer = /^(\d{3}) (\{.*\})$/.exec(span.text);
    if (answer) {
      const value = parseJson(where, answer[2]!, problems);
      const schema = INLINE_ANSWER_SCHEMAS[Number(answer[1])];
      if (schema) conforms(where, schema[0], schema[1], value, problems);
    } else if (span.text.startsWith('{"type"')) {
      checkStreamLine(where, span.text, problems);
    } else if (span.text.startsWith('{"image"')) {
      conforms(where, 'entry of "images"', imageRequestSchema, parseJson(where, span.text, problems), problems);
    }
  }
  return problems;
}

/** The document with one passage replaced; throws unless the passage is there exactly once. */
function edited(from: string, to: string): string {
  const parts = API_DOC.split(from);
  if (parts.length !== 2) throw new Error(`docs/api.md holds ${JSON.stringify(from)} ${parts.length - 1} times, not once`);
  return parts.join(to);
}

describe('docs/api.md', () => {
  it('shows only examples the contract accepts', () => {
    expect(problemsOf(API_DOC)).toEqual([]);
  });

  it('has the examples this test reads (an empty read cannot pass)', () => {
    const { fenced, inline } = examplesOf(API_DOC);
    expect(fenced.map((example) => example.section)).toEqual(Object.keys(SECTIONS));
    expect(inline.filter((span) => span.text.startsWith('202 '))).toHaveLength(1);
  });

  // Positive controls: the same document with one example broken is refused, for that reason.
  it.each([
    ['a request with an unknown field', '"callback": {', '"calback": {', /POST \/clone.*not a valid request/],
    [
      'a request naming an image the function refuses',
      '"images": ["nginx:1.27"',
      '"images": ["NGINX:1.27"',
      /NGINX:1.27 is refused/,
    ],
    [
      'a result with a status the contract lacks',
      '"status": "copied"',
      '"status": "done"',
      /result 0: not a valid result at "status"/,
    ],
    [
      'a result whose target is pinned by another digest',
      '"target": "docker.io/backupacct/nginx:1.27@sha256:e069',
      '"target": "docker.io/backupacct/nginx:1.27@sha256:f069',
      /is not pinned by digest/,
    ],
    ['a stream that stops before its results', /\n\{"type":"done".*\n/.exec(API_DOC)![0], '\n', /the stream ends with result/],
    [
      'a progress line without its total',
      '"done":1048576,"total":29126784',
      '"done":1048576',
      /line 2: not a valid progress line/,
    ],
    ['a placeholder that is not JSON', '{"type":"done","results":[{', '{"type":"done","results":[…,{', /line 4: not JSON/],
    ['a callback body without its job', '{"job":"<id>","context"', '{"context"', /body: not a valid callback body at "job"/],
    ['a callback header the function does not send', 'x-clone-timestamp:', 'x-clone-time:', /headers .*x-clone-time,/],
    ['a 202 answer without its job', '`202 {"job":"<id>"}`', '`202 {"id":"<id>"}`', /not a valid 202 answer at "job"/],
    [
      'an error line of another shape',
      '`{"type":"error","error":"…"}`',
      '`{"type":"error","error":1}`',
      /not a valid progress line/,
    ],
    [
      'an image entry with credentials of another shape',
      '"credentials": {"username": "…"',
      '"credentials": {"user": "…"',
      /not a valid entry of "images"/,
    ],
    ['an example nothing checks', '## `GET /healthz`', '## Other\n\n```json\n{}\n```\n\n## `GET /healthz`', /does not know/],
  ])('refuses %s', (_what, from, to, reason) => {
    expect(problemsOf(edited(from, to))).toEqual([expect.stringMatching(reason)]);
  });
});
