// Package configs is the schema of `newbie-train --config lora.yaml`: the
// YAML file as Go structs with documented defaults, the checks that turn a
// mistyped or impossible setting into an error naming the key and its line,
// and the mappings onto the option types of the packages that do the work
// (data.Options, optim.Config, optim.Hyper).
//
// A file is read in three passes so that every problem of a file is reported
// at once, not only the first:
//
//  1. the YAML is parsed into a yaml.Node tree, which keeps line numbers;
//  2. the tree is walked against the structs below: unknown keys (with the
//     nearest known key suggested), duplicate keys and values of the wrong
//     type are recorded, and every other value replaces its default;
//  3. derived defaults are filled in (bucket sides from the resolution, the
//     cache and log file inside the output folder, alpha = rank, …), relative
//     paths are resolved against the file's folder, and every value is
//     checked against its range and against the values it depends on.
//
// Parse and Load read a file, with the command line's --set key=value
// overrides written into the parsed tree before step 2, so an override is
// checked exactly as the file's own value is and its problems name it;
// Finish does the same completion and checks
// for a config built in code; CheckPaths, kept apart so that a config can be
// parsed and printed on a machine without the data, checks that the inputs
// exist. The effective config prints back as YAML (Config.YAML), which parses to
// the same config, and Config.Hash fingerprints the fields that change the
// numbers a run produces, so that a resumed run can refuse a state written
// under different settings; Diff names the keys (HashedValues) that differ.
//
// The two example files, lora.yaml (a real run on a GPU) and demo.yaml (the
// tiny model on the CPU backend), are embedded in the package: Example
// returns them and WriteExample writes one out.
package configs
