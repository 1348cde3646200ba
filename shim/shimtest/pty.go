package shimtest

import (
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// openPTY opens a pseudo-terminal pair.
func openPTY() (master, slave *os.File, err error) {
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		m.Close()
		return nil, nil, fmt.Errorf("unlock pty: %w", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		m.Close()
		return nil, nil, fmt.Errorf("pty number: %w", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		m.Close()
		return nil, nil, err
	}
	return m, s, nil
}

func setWinsize(f *os.File, rows, cols uint16) error {
	return unix.IoctlSetWinsize(int(f.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
}

func (p *fakeProc) startTTY() error {
	m, s, err := openPTY()
	if err != nil {
		return err
	}
	if cs := p.spec.ConsoleSize; cs != nil && cs.Height > 0 {
		_ = setWinsize(m, uint16(cs.Height), uint16(cs.Width))
	}
	p.cmd.Stdin, p.cmd.Stdout, p.cmd.Stderr = s, s, s
	p.cmd.SysProcAttr.Setsid = true
	p.cmd.SysProcAttr.Setctty = true
	p.cmd.SysProcAttr.Ctty = 0
	err = p.cmd.Start()
	s.Close()
	if err != nil {
		m.Close()
		p.stdout.close()
		p.stderr.close()
		return err
	}
	p.tty = m
	p.stderr.close()
	var copies sync.WaitGroup
	copies.Add(1)
	go func() {
		defer copies.Done()
		// Reading the master fails with EIO once the last slave is closed.
		p.stdout.fill(m)
	}()
	go p.wait(&copies)
	return nil
}
