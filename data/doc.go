// Package data turns a person's folders of images and caption files into the
// batches the trainer consumes.
//
// The stages, in the order a run meets them:
//
//   - Scan walks the dataset folders (with per-folder repeat counts), pairs
//     every image with its caption file, and validates everything cheap to
//     check before any expensive work: unreadable, truncated, empty or too
//     small images, colour modes that need a rule (CMYK, 16-bit, alpha),
//     duplicate files, malformed XML captions, and images larger than
//     MaxPixels, which are refused from their header before anything is
//     decoded (one pixel budget also bounds what the workers decode at
//     once). Symbolic links are followed (a link to an ancestor is refused
//     as a loop); nested folders are reported, not read. Every problem
//     names its file or folder (and line, for XML); Strict makes any
//     problem fatal.
//   - Captions are parsed as NewBie's XML prompt format, plain tags or
//     natural language, and turned into the texts the encoders see (the
//     Gemma system prompt in front for the feature encoder, nothing for the
//     pooled CLIP encoder), with trigger words, tag shuffling, tag dropout and
//     caption dropout decided by seeded draws.
//   - Every image goes to one aspect-ratio bucket around a target area
//     (sides multiples of 16 px) and is cropped and resized to it with a
//     Lanczos-3 filter (and, with Flip, also mirrored: the mirrored crop is
//     encoded as its own cache entry).
//   - The encode cache runs the image encoder (VAE) and text encoders once
//     per distinct input and stores the results as safetensors files keyed by
//     content hash, encoder identity and settings, so an edit re-encodes only
//     what it changed and a damaged file is re-encoded, never loaded.
//   - The Loader replays the cached samples as bucket-pure batches in an
//     order fixed by the seed, prefetching on a goroutine, with a Cursor that
//     a saved training state restores to see exactly the same batches.
//
// Everything here works on host memory: encoders return host arrays, and the
// trainer uploads a batch to the device itself.
package data
