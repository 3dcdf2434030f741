module switchboard.test/probe

go 1.26
