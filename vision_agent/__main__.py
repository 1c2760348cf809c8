from vision_agent.frontends.cli.main import main

raise SystemExit(main())
