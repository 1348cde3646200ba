// hello is a tiny static program used as /init in builder tests.
package main

/*
int answer(void) { return 42; }
*/
import "C"

import "fmt"

func main() { fmt.Println("hello from init", C.answer()) }
