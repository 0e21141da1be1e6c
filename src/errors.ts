/**
 * Typed errors. Every error flashlm throws on purpose is a FlashlmError with a
 * stable `code`, so callers can branch without parsing messages.
 */
export type ErrorCode =
  | 'FORMAT' // not a .flm, unsupported version, malformed header or tables
  | 'INTEGRITY' // bytes read do not match the file's hashes
  | 'CONVERT' // a checkpoint could not be converted (names the file and tensor)
  | 'TOKENIZER' // tokenizer missing, malformed or of the wrong kind
  | 'BUDGET' // the memory budget cannot hold what must be resident
  | 'SOURCE' // the flash tier failed: I/O error, HTTP status, changed file
  | 'ARGUMENT' // a caller passed an invalid option
  | 'ABORTED'; // the caller's AbortSignal fired

export class FlashlmError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** The .flm file is not well formed. */
export class FormatError extends FlashlmError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('FORMAT', message, options);
  }
}

/** A chunk's hash does not match the one recorded in the file. */
export class IntegrityError extends FlashlmError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('INTEGRITY', message, options);
  }
}

/** Conversion failed; `file` and `tensor` say where. */
export class ConvertError extends FlashlmError {
  readonly file: string;
  readonly tensor: string | undefined;
  constructor(file: string, tensor: string | undefined, message: string, options?: { cause?: unknown }) {
    super('CONVERT', `${file}${tensor ? ` [${tensor}]` : ''}: ${message}`, options);
    this.file = file;
    this.tensor = tensor;
  }
}

export class TokenizerError extends FlashlmError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('TOKENIZER', message, options);
  }
}

/** The memory budget is too small for what must stay resident. */
export class BudgetError extends FlashlmError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('BUDGET', message, options);
  }
}

export class SourceError extends FlashlmError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('SOURCE', message, options);
  }
}

export class ArgumentError extends FlashlmError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ARGUMENT', message, options);
  }
}

/** The caller's AbortSignal fired. Named 'AbortError', as web code checks (DOMException's name for an abort); the code stays 'ABORTED'. */
export class AbortedError extends FlashlmError {
  constructor(message = 'aborted', options?: { cause?: unknown }) {
    super('ABORTED', message, options);
    this.name = 'AbortError';
  }
}
