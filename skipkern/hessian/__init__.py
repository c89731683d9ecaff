from skipkern.hessian.operator import CurvatureOperator, DenseOperator, HessianOperator
