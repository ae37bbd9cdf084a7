from bench.scale_sim.run import main

main()
