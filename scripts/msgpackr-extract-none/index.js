// msgpackr catches this and uses its JavaScript decoder (see package.json).
throw new Error('flashlm does not use the native msgpackr-extract');
