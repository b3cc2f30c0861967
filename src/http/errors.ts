import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { TallyError } from '../errors.js';

/**
 * The one place errors become answers. TallyErrors carry their own status and code; Fastify's
 * own 4xx (body too large, bad JSON, wrong media type) are given product codes; anything else
 * is a bug: logged with its stack, answered 500 without internals.
 */
export function renderError(error: FastifyError | Error, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  if (error instanceof TallyError) {
    // A 503 is temporary (the database or Stripe): say when to come back, and tell the operator why.
    if (error.status === 503) {
      void reply.header('retry-after', '5');
      request.log.warn({ err: error.cause ?? error, code: error.code }, 'unavailable');
    }
    return reply.code(error.status).send(error.toBody());
  }
  const status = (error as FastifyError).statusCode;
  if (status === 413) {
    return reply.code(413).send({ error: { code: 'payload_too_large', message: 'the body is larger than 1 MiB' } });
  }
  if (status === 415) {
    return reply.code(415).send({ error: { code: 'unsupported_media_type', message: 'send application/json' } });
  }
  if (status !== undefined && status >= 400 && status < 500) {
    return reply.code(400).send({ error: { code: 'invalid_request', message: `body: ${error.message}`, field: 'body' } });
  }
  request.log.error({ err: error }, 'request failed');
  return reply.code(500).send({ error: { code: 'internal_error', message: 'internal error; the operator has the details in the log' } });
}
