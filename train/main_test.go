package train

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/newbie-train/newbie-train/configs"
)

// helperRunEnv makes the test binary, started again by a test, act as a
// second newbie-train process: it trains the config file the variable
// names (a long run) until it is killed, printing its log on stdout.
const helperRunEnv = "NEWBIE_TRAIN_TEST_RUN"

func TestMain(m *testing.M) {
	if path := os.Getenv(helperRunEnv); path != "" {
		cfg, err := configs.Load(path, "train.max_steps=100000")
		if err == nil {
			_, err = Run(context.Background(), cfg, Options{Log: os.Stdout})
		}
		fmt.Println("helper run ended:", err)
		os.Exit(3)
	}
	os.Exit(m.Run())
}
