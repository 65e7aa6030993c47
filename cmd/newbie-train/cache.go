package main

import (
	"io"

	"github.com/spf13/cobra"

	"github.com/newbie-train/newbie-train/train"
)

func newCacheCmd(stderr io.Writer) *cobra.Command {
	var config string
	var sets []string
	cmd := &cobra.Command{
		Use:   "cache --config lora.yaml",
		Short: "Scan the dataset and fill the encode cache, without training",
		Long: `cache validates every image and caption (printing a summary table of buckets
and of skipped files with their reasons) and encodes what the cache lacks, so
a later training run starts at once. A changed image, caption or setting
re-encodes only what changed; a damaged cache file is re-encoded with a
warning.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(config, sets)
			if err != nil {
				return err
			}
			if err := cfg.CheckPaths(); err != nil {
				return usageError{err}
			}
			return train.Cache(cmd.Context(), cfg, stderr, stageFrom(cmd.Context()))
		},
	}
	cmd.Flags().StringVarP(&config, "config", "c", "", "the run's lora.yaml")
	addSetFlag(cmd, &sets)
	return cmd
}
